//! naga's parse of each specialised kernel, kept on disk so that a later process building the
//! same pipeline skips the WGSL front end.
//!
//! Why: the front end's type resolution grows with the square of a function's expression count
//! (naga 30's `Typifier::grow` walks the expression arena from its start on every call), and the
//! register kernels are one long unrolled function. A `perf record` of a warm `wgattn run`
//! (head dim 48, Mesa's shader cache full) put 64% of its 2.1 s there; the validator and the
//! SPIR-V writer take a few per cent. Mesa's own cache (lavapipe) already skips the LLVM compile,
//! so with this one a second process pays only the driver's front end.
//!
//! One file per specialised WGSL text: `wgsl-<64-bit FNV-1a of the text>-naga30.bin` in the
//! context's cache folder ([`crate::ContextOptions::cache_dir`]), holding the text itself and the
//! module (postcard). A file is used only if its text is the one asked for (so a hash collision
//! or a stale file is a miss) and the module it holds passes naga's validator again; anything
//! else is a miss and the file is rewritten. Files are written through a temporary file and a
//! rename, so a reader never sees half of one. Deleting the folder, or any file in it, is always
//! safe.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shader::fnv1a;

/// Bumped when what a file holds changes meaning (the layout of the tuple below).
const FORMAT: u32 = 1;

/// The cache folder of a context: where parsed modules are read and written.
#[derive(Debug)]
pub(crate) struct ParseCache {
    dir: PathBuf,
}

impl ParseCache {
    /// A cache in `dir`, or none where no folder is configured.
    pub fn open(dir: Option<&Path>) -> Option<Self> {
        dir.map(|d| Self { dir: d.to_path_buf() })
    }

    fn path(&self, text: &str) -> PathBuf {
        self.dir.join(format!("wgsl-{:016x}-naga{}.bin", fnv1a(text.as_bytes()), crate::tune::WGPU_VERSION))
    }

    /// The module parsed from `text` by an earlier store, if a file holds exactly that text.
    /// The caller validates it again.
    pub fn load(&self, text: &str) -> Option<naga::Module> {
        let bytes = std::fs::read(self.path(text)).ok()?;
        match postcard::from_bytes::<(u32, String, naga::Module)>(&bytes) {
            Ok((FORMAT, stored, module)) if stored == text => Some(module),
            Ok(_) => None,
            Err(e) => {
                log::debug!("ignoring an unreadable parse cache file: {e}");
                None
            }
        }
    }

    /// Keep `module`, parsed from `text`. Failures are logged, never returned: the cache only
    /// saves time.
    pub fn store(&self, text: &str, module: &naga::Module) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.path(text);
        let result = (|| -> std::io::Result<()> {
            let bytes = postcard::to_stdvec(&(FORMAT, text, module)).map_err(std::io::Error::other)?;
            std::fs::create_dir_all(&self.dir)?;
            let tmp = path.with_extension(format!(
                "tmp{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })();
        if let Err(e) = result {
            log::warn!("could not write the parse cache file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WGSL: &str = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
        @compute @workgroup_size(1) fn main() { x[0] = 1.0; }\n";

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wgattn-parse-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_stored_module_comes_back_for_its_text_only() {
        let dir = temp_dir("roundtrip");
        let cache = ParseCache::open(Some(&dir)).unwrap();
        assert!(cache.load(WGSL).is_none(), "empty folder: a miss");
        let module = naga::front::wgsl::parse_str(WGSL).unwrap();
        cache.store(WGSL, &module);
        let back = cache.load(WGSL).expect("stored: a hit");
        assert_eq!(back.entry_points.len(), 1);
        assert_eq!(back.entry_points[0].name, "main");
        assert_eq!(back.global_variables.len(), module.global_variables.len());
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&back)
            .expect("a cached module validates");
        // another text is a miss even when it is given the same file
        let other = WGSL.replace("1.0", "2.0");
        std::fs::copy(cache.path(WGSL), cache.path(&other)).unwrap();
        assert!(cache.load(&other).is_none(), "a file holding another text is a miss");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_is_a_miss() {
        let dir = temp_dir("damaged");
        let cache = ParseCache::open(Some(&dir)).unwrap();
        let module = naga::front::wgsl::parse_str(WGSL).unwrap();
        cache.store(WGSL, &module);
        let path = cache.path(WGSL);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(cache.load(WGSL).is_none(), "a truncated file is a miss");
        std::fs::write(&path, b"not postcard at all").unwrap();
        assert!(cache.load(WGSL).is_none(), "garbage is a miss");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_hash_is_fixed() {
        // FNV-1a's published test vectors: the file names must not change between releases
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
