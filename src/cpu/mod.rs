//! CPU paths. [`reference`](mod@reference) is the f64 oracle every GPU kernel is checked against.

pub mod flash;
pub mod reference;
