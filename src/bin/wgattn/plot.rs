//! `wgattn bench --plot`: GFLOP/s against sequence length as a self-contained SVG, one line per
//! (backend, mode) — and per any other axis the sweep varied (head dim, heads, batch, ...).
//!
//! Written by hand (no plotting dependency): a log₂ x axis when the lengths span a factor of 4 or
//! more, a linear y axis from 0 (logarithmic when the rates span more than a factor of 100), grid
//! lines, axis titles and a legend to the right. Each point carries a `<title>` tooltip with its
//! numbers. Colours follow the backend (lighter shades for the other axes' values), dash patterns
//! and marker shapes the mode.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::bench::Row;

/// Smallest width of the picture (the legend may widen it).
const MIN_WIDTH: f64 = 1000.0;
/// Width of a legend character at 13 px (generous for DejaVu Sans).
const CHAR_W: f64 = 7.6;
const LEFT: f64 = 84.0;
const TOP: f64 = 64.0;
const PLOT_W: f64 = 640.0;
const PLOT_H: f64 = 440.0;
const LEGEND_X: f64 = LEFT + PLOT_W + 28.0;
const LEGEND_ROW: f64 = 22.0;

/// Colour of a backend (a palette for unknown ones, e.g. merged rows).
fn colour(backend: &str, other: usize) -> &'static str {
    const PALETTE: [&str; 6] = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79"];
    match backend {
        "gpu-fused" => "#1f77b4",
        "gpu-naive" => "#ff7f0e",
        "cpu-fast" => "#2ca02c",
        "cpu-reference" => "#7f7f7f",
        "torch-cpu" => "#d62728",
        _ => PALETTE[other % PALETTE.len()],
    }
}

/// Dash pattern of a mode.
fn dash(mode: &str) -> &'static str {
    match mode {
        "dense" => "",
        "causal" => "9 4",
        "window" => "2 4",
        "block-sparse" => "10 3 2 3",
        "topk" => "5 2 1 2",
        "decode" => "14 4 4 4",
        _ => "6 2",
    }
}

const BACKEND_ORDER: [&str; 5] = ["gpu-fused", "gpu-naive", "cpu-fast", "cpu-reference", "torch-cpu"];
const MODE_ORDER: [&str; 6] = ["dense", "causal", "window", "block-sparse", "topk", "decode"];

fn rank(list: &[&str], x: &str) -> usize {
    list.iter().position(|y| *y == x).unwrap_or(list.len())
}

/// One axis's value of a row, as a label.
type AxisValue = fn(&Row) -> String;

/// One line of the plot.
struct Series<'a> {
    backend: String,
    mode: String,
    /// The other axes' values that tell it apart ("D=64 H=8"), or empty.
    rest: String,
    points: Vec<(f64, f64, &'a Row)>,
}

impl Series<'_> {
    fn label(&self) -> String {
        let mut s = format!("{} {}", self.backend, self.mode);
        if !self.rest.is_empty() {
            s += &format!(" ({})", self.rest);
        }
        s
    }
}

/// A mapping of data to pixels along one axis.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    /// Pixel range (start maps `lo`).
    p0: f64,
    p1: f64,
}

impl Axis {
    fn map(&self, v: f64) -> f64 {
        let (a, b, x) = if self.log { (self.lo.ln(), self.hi.ln(), v.ln()) } else { (self.lo, self.hi, v) };
        let t = if b > a { (x - a) / (b - a) } else { 0.5 };
        self.p0 + t * (self.p1 - self.p0)
    }
}

/// A step of 1, 2, 2.5 or 5 times a power of ten giving about `n` intervals over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let f = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|&f| f >= norm - 1e-9).unwrap_or(10.0);
    f * mag
}

/// `v` with as few decimals as it needs (at most 3).
fn short(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A length with a k suffix for exact multiples of 1024 from 16384 on.
fn length(v: f64) -> String {
    let n = v.round() as u64;
    if n >= 16384 && n.is_multiple_of(1024) {
        format!("{}k", n / 1024)
    } else {
        n.to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A marker of shape `shape` (circle, square, triangle, diamond, triangle down, hollow circle) at
/// (x, y), with a tooltip.
fn marker(shape: usize, x: f64, y: f64, fill: &str, tip: &str) -> String {
    let r = 4.0;
    let poly = |pts: &[(f64, f64)]| {
        let pts: Vec<String> =
            pts.iter().map(|(dx, dy)| format!("{:.1},{:.1}", x + dx * r, y + dy * r)).collect();
        ("polygon", format!(r#"points="{}""#, pts.join(" ")))
    };
    if shape % 6 == 5 {
        // hollow circle
        return format!(
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="white" stroke="{fill}" stroke-width="2"><title>{}</title></circle>"#,
            escape(tip)
        );
    }
    let (tag, attrs) = match shape % 6 {
        0 => ("circle", format!(r#"cx="{x:.1}" cy="{y:.1}" r="{r}""#)),
        1 => {
            ("rect", format!(r#"x="{:.1}" y="{:.1}" width="{}" height="{}""#, x - r, y - r, 2.0 * r, 2.0 * r))
        }
        2 => poly(&[(0.0, -1.3), (-1.2, 0.9), (1.2, 0.9)]),
        3 => poly(&[(0.0, -1.4), (1.4, 0.0), (0.0, 1.4), (-1.4, 0.0)]),
        _ => poly(&[(0.0, 1.3), (-1.2, -0.9), (1.2, -0.9)]),
    };
    format!(
        r#"<{tag} {attrs} fill="{fill}" stroke="white" stroke-width="0.8"><title>{}</title></{tag}>"#,
        escape(tip)
    )
}

/// `hex` (#rrggbb) mixed with white by `f` in [0, 1).
fn lighten(hex: &str, f: f64) -> String {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0) as f64;
    let m = |v: f64| (v + (255.0 - v) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", m(c(1)), m(c(3)), m(c(5)))
}

/// The SVG document for `rows` (rows without numbers are left out).
pub fn svg(rows: &[Row], title: &str) -> String {
    let plotted: Vec<&Row> =
        rows.iter().filter(|r| r.gflops.is_some_and(|g| g > 0.0 && g.is_finite())).collect();

    // axes other than backend, mode and x that vary among the plotted rows go into the labels
    let distinct = |f: &AxisValue| plotted.iter().map(|r| f(r)).collect::<BTreeSet<_>>().len() > 1;
    let candidates: [(&str, AxisValue); 6] = [
        ("B", |r| r.batch.to_string()),
        ("H", |r| r.q_heads.to_string()),
        ("Hkv", |r| r.kv_heads.to_string()),
        ("D", |r| r.head_dim.to_string()),
        ("dtype", |r| r.dtype.clone()),
        // with --kv-seq the key length is an axis of its own (x is the query length)
        ("Nk", |r| if r.mode == "decode" { "-".into() } else { r.kv_len.to_string() }),
    ];
    let kv_axis = plotted.iter().any(|r| r.mode != "decode" && r.kv_len != r.q_len);
    let rest_axes: Vec<(&str, AxisValue)> = candidates
        .into_iter()
        .filter(|(name, f)| match *name {
            "Nk" => kv_axis,
            // K/V heads only where some differ from the query heads (GQA/MQA)
            "Hkv" => distinct(f) && plotted.iter().any(|r| r.kv_heads != r.q_heads),
            _ => distinct(f),
        })
        .collect();

    let mut series: Vec<Series> = Vec::new();
    for r in &plotted {
        let mode = match r.requested_density {
            Some(d) => format!("{}@{d}", r.mode),
            None => r.mode.clone(),
        };
        let rest = rest_axes
            .iter()
            .map(|(n, f)| format!("{n}={}", f(r)))
            .filter(|s| !s.ends_with("=-"))
            .collect::<Vec<_>>();
        let rest = rest.join(" ");
        let point = (r.x() as f64, r.gflops.unwrap_or(0.0), *r);
        match series.iter_mut().find(|s| s.backend == r.backend && s.mode == mode && s.rest == rest) {
            Some(s) => s.points.push(point),
            None => series.push(Series { backend: r.backend.clone(), mode, rest, points: vec![point] }),
        }
    }
    series.sort_by(|a, b| {
        let base = |s: &Series| s.mode.split('@').next().unwrap_or("").to_string();
        (rank(&BACKEND_ORDER, &a.backend), &a.backend, rank(&MODE_ORDER, &base(a)), &a.mode, &a.rest).cmp(&(
            rank(&BACKEND_ORDER, &b.backend),
            &b.backend,
            rank(&MODE_ORDER, &base(b)),
            &b.mode,
            &b.rest,
        ))
    });
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    // x: log2 when the lengths span a factor of 4 or more
    let xs: BTreeSet<u64> = plotted.iter().map(|r| r.x() as u64).collect();
    let (xmin, xmax) = (*xs.first().unwrap_or(&1) as f64, *xs.last().unwrap_or(&1) as f64);
    let x_log = xmin > 0.0 && xmax / xmin >= 4.0;
    let xaxis = if xmin == xmax {
        Axis { lo: xmin * 0.5, hi: xmin * 1.5, log: false, p0: LEFT, p1: LEFT + PLOT_W }
    } else if x_log {
        let pad = (xmax / xmin).powf(0.04);
        Axis { lo: xmin / pad, hi: xmax * pad, log: true, p0: LEFT, p1: LEFT + PLOT_W }
    } else {
        let pad = (xmax - xmin) * 0.05;
        Axis { lo: xmin - pad, hi: xmax + pad, log: false, p0: LEFT, p1: LEFT + PLOT_W }
    };
    let xticks: Vec<f64> = if xs.len() <= 12 {
        xs.iter().map(|&x| x as f64).collect()
    } else if x_log {
        (0..64).map(|e| 2f64.powi(e)).filter(|&v| v >= xmin && v <= xmax).collect()
    } else {
        let step = nice_step(xmax - xmin, 6.0);
        let mut v = (xmin / step).ceil() * step;
        let mut t = Vec::new();
        while v <= xmax + 1e-9 {
            t.push(v);
            v += step;
        }
        t
    };

    // y: GFLOP/s from 0, or log10 when the rates span more than a factor of 100
    let ys: Vec<f64> = plotted.iter().filter_map(|r| r.gflops).collect();
    let (ymin, ymax) = ys.iter().fold((f64::INFINITY, 0f64), |(a, b), &y| (a.min(y), b.max(y)));
    let y_log = !ys.is_empty() && ymax / ymin > 100.0;
    let (yaxis, yticks) = if ys.is_empty() {
        (Axis { lo: 0.0, hi: 1.0, log: false, p0: TOP + PLOT_H, p1: TOP }, vec![0.0, 0.5, 1.0])
    } else if y_log {
        // the 1-2-5 steps from the one at or below the smallest rate to the one at or above the largest
        let steps: Vec<f64> = (-12..=15).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e))).collect();
        let lo = steps.iter().copied().rfind(|&v| v <= ymin * 1.0001).unwrap_or(ymin);
        let hi = steps.iter().copied().find(|&v| v >= ymax * 0.9999).unwrap_or(ymax);
        let t: Vec<f64> = steps.iter().copied().filter(|&v| v >= lo * 0.9999 && v <= hi * 1.0001).collect();
        (Axis { lo, hi, log: true, p0: TOP + PLOT_H, p1: TOP }, t)
    } else {
        let step = nice_step(ymax * 1.05, 6.0);
        let hi = (ymax * 1.05 / step).ceil() * step;
        let n = (hi / step).round() as usize;
        (
            Axis { lo: 0.0, hi, log: false, p0: TOP + PLOT_H, p1: TOP },
            (0..=n).map(|i| i as f64 * step).collect(),
        )
    };

    let height = (TOP + PLOT_H + 70.0).max(TOP + 30.0 + LEGEND_ROW * (series.len() as f64 + 2.0));
    let longest = series.iter().map(|s| s.label().chars().count()).max().unwrap_or(0) as f64;
    let width = MIN_WIDTH.max(LEGEND_X + 44.0 + longest * CHAR_W + 16.0).ceil();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="26" font-size="16" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="46" font-size="12" fill="#555" text-anchor="middle">GFLOP/s = 4·B·Hq·Nq·Nk·D × density / median time (higher is better)</text>"##,
        width / 2.0
    );

    // grid and tick labels
    for &t in &yticks {
        let y = yaxis.map(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + PLOT_W,
            LEFT - 8.0,
            y + 4.5,
            short(t)
        );
    }
    for &t in &xticks {
        let x = xaxis.map(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#e3e3e3"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            TOP + PLOT_H,
            TOP + PLOT_H + 20.0,
            length(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="black"/>"#
    );

    // axis titles
    let decode = plotted.iter().filter(|r| r.mode == "decode").count();
    let xtitle = if plotted.is_empty() || decode == 0 {
        if plotted.iter().all(|r| r.kv_len == r.q_len) {
            "sequence length N (Nq = Nk)"
        } else {
            "query length Nq"
        }
    } else if decode == plotted.len() {
        "KV length Nk (decode: one query)"
    } else {
        "sequence length Nq (decode: KV length Nk)"
    };
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}{}</text>"#,
        LEFT + PLOT_W / 2.0,
        TOP + PLOT_H + 46.0,
        xtitle,
        if x_log { " — log scale" } else { "" }
    );
    let ymid = TOP + PLOT_H / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="22" y="{ymid}" font-size="14" text-anchor="middle" transform="rotate(-90 22 {ymid})">GFLOP/s{}</text>"#,
        if y_log { " (log scale)" } else { "" }
    );
    if plotted.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{ymid}" font-size="15" fill="#888" text-anchor="middle">no row with numbers to plot</text>"##,
            LEFT + PLOT_W / 2.0
        );
    }

    // lines, markers and the legend
    let mut unknown = Vec::<String>::new();
    let _ = writeln!(s, r#"<text x="{LEGEND_X}" y="{}" font-weight="bold">backend  mode</text>"#, TOP + 4.0);
    for (i, se) in series.iter().enumerate() {
        if !BACKEND_ORDER.contains(&se.backend.as_str()) && !unknown.contains(&se.backend) {
            unknown.push(se.backend.clone());
        }
        let base = colour(&se.backend, unknown.iter().position(|b| *b == se.backend).unwrap_or(0));
        // each value of the other axes lightens the backend's colour a step further
        let own: BTreeSet<&str> =
            series.iter().filter(|o| o.backend == se.backend).map(|o| o.rest.as_str()).collect();
        let step = own.iter().position(|r| *r == se.rest).unwrap_or(0);
        let c = &lighten(base, (step as f64 / own.len() as f64) * 0.7);
        let mode = se.mode.split('@').next().unwrap_or("");
        let d = dash(mode);
        let shape = rank(&MODE_ORDER, mode);
        let dash_attr = if d.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{d}""#) };
        let pts: Vec<String> =
            se.points.iter().map(|(x, y, _)| format!("{:.1},{:.1}", xaxis.map(*x), yaxis.map(*y))).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.2"{dash_attr}/>"#,
            pts.join(" ")
        );
        for (x, y, r) in &se.points {
            let tip = format!(
                "{}: {}={}: {:.3} GFLOP/s, {:.3} ms",
                se.label(),
                if r.mode == "decode" { "Nk" } else { "N" },
                *x as u64,
                y,
                r.median_ms.unwrap_or(f64::NAN)
            );
            let _ = writeln!(s, "{}", marker(shape, xaxis.map(*x), yaxis.map(*y), c, &tip));
        }
        let ly = TOP + 4.0 + LEGEND_ROW * (i as f64 + 1.0);
        let _ = writeln!(
            s,
            r#"<line x1="{LEGEND_X}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{c}" stroke-width="2.2"{dash_attr}/>{}<text x="{}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            LEGEND_X + 36.0,
            ly - 4.0,
            marker(shape, LEGEND_X + 18.0, ly - 4.0, c, &se.label()),
            LEGEND_X + 44.0,
            ly,
            escape(&se.label())
        );
    }
    s += "</svg>\n";
    s
}
