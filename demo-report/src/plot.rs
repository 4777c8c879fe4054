//! rul.svg: predicted against true RUL over the cycles of a few engines, and every engine's
//! last prediction against its truth. SVG needs no fonts on the machine that draws it.

use crate::error::ReportError;
use crate::report::{EngineSeries, PlotData};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

const PREDICTED: RGBColor = RGBColor(31, 119, 180);
const LAST: RGBColor = RGBColor(214, 39, 40);
const ROW: RGBColor = RGBColor(127, 127, 127);

/// Draws `plot` into the SVG file `path`.
pub fn draw(plot: &PlotData, path: &Path) -> Result<(), ReportError> {
    let fail = |e: DrawingAreaErrorKind<std::io::Error>| ReportError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let panels = plot.engines.len() + 1;
    let cols = match panels {
        1 => 1,
        2..=4 => 2,
        _ => 3,
    };
    let rows = panels.div_ceil(cols);
    let size = (480 * cols as u32, 360 * rows as u32 + 50);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let root = root.titled(&plot.title, ("sans-serif", 26)).map_err(fail)?;
    let areas = root.split_evenly((rows, cols));
    for (area, engine) in areas.iter().zip(&plot.engines) {
        engine_panel(area, engine).map_err(fail)?;
    }
    if let Some(area) = areas.get(plot.engines.len()) {
        last_panel(area, plot).map_err(fail)?;
    }
    root.present().map_err(fail)?;
    Ok(())
}

/// Range of `values` with some room, never empty.
fn range(values: impl Iterator<Item = f64>, floor: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((floor, floor + 10.0), |(lo, hi), v| {
        if v.is_finite() {
            (lo.min(v), hi.max(v))
        } else {
            (lo, hi)
        }
    });
    (lo, hi + (hi - lo) * 0.08)
}

/// Axis labels in whole cycles.
fn whole(v: &f64) -> String {
    format!("{v:.0}")
}

fn engine_panel(area: &Area<'_>, e: &EngineSeries) -> DrawResult {
    let last_cycle = e
        .predicted
        .iter()
        .chain(&e.actual)
        .map(|p| p.0)
        .max()
        .unwrap_or(1);
    let (lo, hi) = range(
        e.predicted
            .iter()
            .chain(&e.actual)
            .map(|p| p.1)
            .chain(e.band.iter().flat_map(|b| [b.1, b.2])),
        0.0,
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("engine {} ({})", e.unit, e.device),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..f64::from(last_cycle) + 1.0, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("cycle")
        .y_desc("RUL (cycles)")
        .x_label_formatter(&whole)
        .y_label_formatter(&whole)
        .light_line_style(BLACK.mix(0.03))
        .label_style(("sans-serif", 12))
        .draw()?;
    let to_xy = |&(c, v): &(u32, f64)| (f64::from(c), v);
    if !e.band.is_empty() {
        let outline: Vec<(f64, f64)> = e
            .band
            .iter()
            .map(|&(c, _, h)| (f64::from(c), h))
            .chain(e.band.iter().rev().map(|&(c, l, _)| (f64::from(c), l)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                outline,
                PREDICTED.mix(0.15).filled(),
            )))?
            .label("80 % interval")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 18, y + 5)], PREDICTED.mix(0.15).filled())
            });
    }
    chart
        .draw_series(LineSeries::new(
            e.actual.iter().map(to_xy),
            BLACK.stroke_width(2),
        ))?
        .label("true RUL")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart.draw_series(LineSeries::new(
        e.predicted.iter().map(to_xy),
        PREDICTED.mix(0.35),
    ))?;
    chart
        .draw_series(
            e.predicted
                .iter()
                .map(|p| Circle::new(to_xy(p), 2, PREDICTED.filled())),
        )?
        .label("predicted RUL")
        .legend(|(x, y)| Circle::new((x + 9, y), 3, PREDICTED.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

fn last_panel(area: &Area<'_>, plot: &PlotData) -> DrawResult {
    let points = &plot.last;
    let (lo, hi) = range(
        points
            .iter()
            .chain(&plot.last_row)
            .flat_map(|&(a, p)| [a, p])
            .chain(plot.last_band.iter().flat_map(|b| [b.1, b.2])),
        0.0,
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("all {} engines, last prediction", points.len()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(48)
        .build_cartesian_2d(lo..hi, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("true RUL (cycles)")
        .y_desc("predicted RUL (cycles)")
        .x_label_formatter(&whole)
        .y_label_formatter(&whole)
        .light_line_style(BLACK.mix(0.03))
        .label_style(("sans-serif", 12))
        .draw()?;
    chart
        .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.5)))?
        .label("perfect prediction")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
    if !plot.last_band.is_empty() {
        chart
            .draw_series(plot.last_band.iter().map(|&(a, l, h)| {
                PathElement::new(vec![(a, l), (a, h)], LAST.mix(0.3).stroke_width(2))
            }))?
            .label("80 % interval")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x + 9, y - 6), (x + 9, y + 6)],
                    LAST.mix(0.3).stroke_width(2),
                )
            });
    }
    if !plot.last_row.is_empty() {
        chart
            .draw_series(
                plot.last_row
                    .iter()
                    .map(|&(a, p)| Cross::new((a, p), 3, ROW.stroke_width(1))),
            )?
            .label("per-row model")
            .legend(|(x, y)| Cross::new((x + 9, y), 3, ROW.stroke_width(1)));
    }
    chart
        .draw_series(
            points
                .iter()
                .map(|&(a, p)| Circle::new((a, p), 3, LAST.filled())),
        )?
        .label("engine")
        .legend(|(x, y)| Circle::new((x + 9, y), 3, LAST.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_panel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rul.svg");
        let plot = PlotData {
            title: "Predicted vs true RUL (test)".into(),
            engines: vec![EngineSeries {
                unit: 24,
                device: "Client_024".into(),
                predicted: vec![(1, 150.0), (2, 140.0), (3, 149.0)],
                actual: vec![(1, 22.0), (2, 21.0), (3, 20.0)],
                band: vec![(1, 100.0, 190.0), (2, 95.0, 180.0), (3, 90.0, 170.0)],
            }],
            last: vec![(20.0, 149.0), (80.0, 70.0)],
            last_band: vec![(20.0, 120.0, 170.0), (80.0, 50.0, 90.0)],
            last_row: vec![(20.0, 60.0), (80.0, 75.0)],
        };
        draw(&plot, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        for want in [
            "engine 24 (Client_024)",
            "all 2 engines",
            "true RUL",
            "predicted RUL",
            "80 % interval",
            "per-row model",
        ] {
            assert!(svg.contains(want), "{want}");
        }
        let empty = PlotData {
            title: "nothing".into(),
            engines: vec![],
            last: vec![],
            last_band: vec![],
            last_row: vec![],
        };
        draw(&empty, &path).unwrap();
    }
}
