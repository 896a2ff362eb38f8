//! PNG line charts of benchmark series (plotters, bitmap backend). Text needs a TrueType font:
//! `TILEMUX_FONT`, or DejaVu Sans from the usual system or matplotlib locations; without one the
//! plot is skipped with a message (the CSV and markdown still carry every number).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One line: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/opt/torch/.venv/lib/python3.12/site-packages/matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf",
    "/usr/lib/python3/dist-packages/matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf",
];

/// Registers a font as "sans-serif" once; `false` when none was found (no charts can be drawn).
pub fn has_font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let mut paths: Vec<String> = std::env::var("TILEMUX_FONT").into_iter().collect();
        paths.extend(FONT_PATHS.iter().map(|s| s.to_string()));
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws `series` into `path` (log-scaled x when `log_x`). Prints and skips without a font.
pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series], log_x: bool) -> Result<()> {
    if !has_font() {
        eprintln!("plot {}: skipped, no TrueType font found (set TILEMUX_FONT)", path.display());
        return Ok(());
    }
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite());
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = ys.fold(0.0f64, f64::max) * 1.1;
    if !x0.is_finite() || y1 <= 0.0 {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 22)).margin(12).x_label_area_size(40).y_label_area_size(70);
    let colors = [
        &BLUE,
        &RED,
        &GREEN,
        &MAGENTA,
        &CYAN,
        &BLACK,
        &RGBColor(255, 140, 0),
        &RGBColor(128, 0, 128),
        &RGBColor(128, 128, 0),
        &RGBColor(0, 128, 128),
        &RGBColor(160, 82, 45),
        &RGBColor(112, 128, 144),
    ];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| anyhow!("{e}"))?;
            for (i, s) in series.iter().enumerate() {
                let c = colors[i % colors.len()];
                let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }};
    }
    if log_x {
        draw!(b.build_cartesian_2d((x0.max(1e-9)..x1 * 1.05).log_scale(), 0.0..y1).map_err(|e| anyhow!("{e}"))?);
    } else {
        draw!(b.build_cartesian_2d(x0..x1 * 1.02, 0.0..y1).map_err(|e| anyhow!("{e}"))?);
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
