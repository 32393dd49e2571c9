//! SVG plot of accuracy against stage, one line per method, with `plotters`.
//!
//! Only plotters' `svg_backend`, `line_series` and `point_series` features are on:
//! text goes out as SVG `<text>` elements laid out with plotters' built-in size
//! estimate (no font files), so the viewer's default sans-serif font draws it.

use std::path::Path;

use anyhow::{anyhow, ensure, Result};
use plotters::prelude::*;

/// One method's curve: accuracy in percent per stage (`None` where undefined).
#[derive(Debug, Clone)]
pub struct Curve {
    pub method: String,
    pub acc: Vec<Option<f64>>,
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `curves` against `stages` (x axis labels) into an SVG file at `path`.
pub fn accuracy_svg(path: &Path, title: &str, stages: &[String], curves: &[Curve]) -> Result<()> {
    ensure!(!stages.is_empty(), "nothing to plot: no stages");
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    draw(&root, title, stages, curves).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error + 'static>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    stages: &[String],
    curves: &[Curve],
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let last = stages.len().saturating_sub(1) as f64;
    let x_max = if last > 0.0 { last } else { 1.0 };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.2f64..x_max + 0.2, 0f64..100f64)?;
    let labels = stages.to_vec();
    chart
        .configure_mesh()
        .x_labels(stages.len().max(2))
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("accuracy (%)")
        .x_desc("stage")
        .draw()?;
    for (k, curve) in curves.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let points: Vec<(f64, f64)> = curve
            .acc
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (i as f64, a)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(curve.method.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_svg_with_every_method() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("acc.svg");
        let stages: Vec<String> = ["2%", "4%", "8%"].map(String::from).to_vec();
        let curves = [
            Curve {
                method: "zero-shot".into(),
                acc: vec![Some(50.0), Some(50.0), Some(50.0)],
            },
            Curve {
                method: "ncm".into(),
                acc: vec![Some(20.0), None, Some(80.0)],
            },
        ];
        accuracy_svg(&path, "data-incremental on shapes", &stages, &curves).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
        for text in [
            "zero-shot",
            "ncm",
            "8%",
            "accuracy (%)",
            "data-incremental on shapes",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(svg.matches("<circle").count() >= 5);
    }

    #[test]
    fn a_single_stage_still_renders() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("one.svg");
        let curves = [Curve {
            method: "m".into(),
            acc: vec![Some(10.0)],
        }];
        accuracy_svg(&path, "t", &["only".into()], &curves).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("only"));
        assert!(accuracy_svg(&path, "t", &[], &curves).is_err());
    }
}
