//! Charts for people to read at a glance: line charts (log axes, error bars, a legend beside the
//! plot), the training loss curve, and scatter plots of 2-D samples over faint samples of their
//! target. They are drawn with `plotters` into an RGB buffer and encoded as PNG by
//! [`crate::output::rgb_png`]. Text is set in DejaVu Sans, embedded in the binary
//! (`assets/fonts`, its licence beside it), so a picture looks the same on every machine and
//! needs no system fonts; the drawing backend here (`Canvas`) lays it out with ab_glyph
//! itself, glyph by glyph. Every function checks its input first and returns an [`Error`] that
//! names the problem; none panics.
#![warn(missing_docs)]

use crate::error::{Error, Result};
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};
use std::ops::Range;
use std::sync::OnceLock;

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu`).
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// The font family every text here is set in; the embedded font is registered under it.
const FONT: &str = "sans-serif";

/// The colours of a line chart's series, in order: series `i` is drawn in `PALETTE[i % 10]`
/// (series 10 to 19 with triangles instead of circles, later ones with crosses).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The colours of the loss curve's t bins, dark blue (t near 0) to yellow-green (t near 1):
/// an ordered ramp, so the bins read as a progression rather than ten unrelated lines.
const T_BIN_COLOURS: [(u8, u8, u8); 10] = [
    (72, 36, 117),
    (65, 68, 135),
    (53, 95, 141),
    (42, 120, 142),
    (33, 145, 140),
    (34, 168, 132),
    (68, 191, 112),
    (122, 209, 81),
    (170, 215, 50),
    (225, 200, 30),
];

/// The loss line of the loss curve.
const LOSS_COLOUR: (u8, u8, u8) = (0, 0, 0);
/// The generated points of a scatter plot: dark blue, drawn semi-transparent.
pub const GENERATED_COLOUR: (u8, u8, u8) = (20, 60, 160);
/// The target's points of a scatter plot: mid grey, drawn faint.
pub const TARGET_COLOUR: (u8, u8, u8) = (110, 110, 110);

/// Pictures are at least this many pixels wide and high (smaller ones leave no room for the
/// axes' labels).
pub const MIN_SIDE: u32 = 160;
/// Pictures are at most this many pixels wide and high.
pub const MAX_SIDE: u32 = 8192;

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its name in the legend.
    pub name: String,
    /// `(x, y)` in the order they are joined.
    pub points: Vec<(f64, f64)>,
    /// optional error bar half-widths, one per point
    pub spread: Option<Vec<f64>>,
}

/// A line chart: one line with markers per series.
#[derive(Clone, Copy, Debug)]
pub struct LineChart<'a> {
    /// Drawn above the plot.
    pub title: &'a str,
    /// The x axis' label.
    pub x_label: &'a str,
    /// The y axis' label.
    pub y_label: &'a str,
    /// A logarithmic x axis (every x must then be positive).
    pub log_x: bool,
    /// A logarithmic y axis (every y must then be positive).
    pub log_y: bool,
    /// The lines, at least one.
    pub series: &'a [Series],
}

/// PNG bytes: axes with ticks and labels, title, one coloured line with markers per series
/// (colours from [`PALETTE`]), error bars where spread is given, a legend with the series names
/// to the right of the plot, log axes where asked (ticks at 1, 2, 5, 10, 20, 50, ... when they
/// fit, else at powers of ten).
///
/// Refused: no series, a series without points, values that are not finite, a spread that is
/// negative or of another length than the points, a value that is not positive on a log axis
/// (each naming the series), and a size outside [`MIN_SIDE`]..=[`MAX_SIDE`].
pub fn line_chart_png(chart: &LineChart, width: u32, height: u32) -> Result<Vec<u8>> {
    check_size("a line chart", width, height)?;
    if chart.series.is_empty() {
        return Err(Error::Config(format!(
            "line chart {:?}: no series to draw; give at least one",
            chart.title
        )));
    }
    let mut lines = Vec::with_capacity(chart.series.len());
    for (i, s) in chart.series.iter().enumerate() {
        check_series(s, chart.log_x, chart.log_y)?;
        let spread = s.spread.as_deref().unwrap_or(&[]);
        lines.push(Line {
            name: s.name.clone(),
            segments: vec![s.points.clone()],
            bars: s
                .points
                .iter()
                .zip(spread)
                .map(|(&(x, y), &d)| (x, y, d))
                .collect(),
            colour: PALETTE[i % PALETTE.len()],
            stroke: 2,
            opacity: 1.0,
            on_top: false,
            marker: Some(Marker::ALL[(i / PALETTE.len()).min(2)]),
        });
    }
    draw_lines(
        &Frame {
            title: chart.title,
            x_label: chart.x_label,
            y_label: chart.y_label,
            log_x: chart.log_x,
            log_y: chart.log_y,
        },
        &lines,
        width,
        height,
    )
}

/// A scatter plot of 2-D points over `[-range, range]^2`.
#[derive(Clone, Copy, Debug)]
pub struct ScatterPlot<'a> {
    /// Drawn above the plot.
    pub title: &'a str,
    /// [n, 2] interleaved
    pub points: &'a [f32],
    /// target samples drawn faint behind the points, if given
    pub target: Option<&'a [f32]>,
    /// the axes span [-range, range] in x and y
    pub range: f32,
}

/// PNG: square, white background, axes with ticks and labels (x, y), title, the target's samples
/// faint ([`TARGET_COLOUR`], small) behind the generated ones ([`GENERATED_COLOUR`], small,
/// semi-transparent so density shows), and a legend under the title ("generated (n)",
/// "target (m)", with how many fall off the chart or are not finite when some do).
///
/// Refused: no points, an odd number of values, a range that is not finite and positive, a
/// size outside [`MIN_SIDE`]..=[`MAX_SIDE`].
pub fn scatter_png(plot: &ScatterPlot, size: u32) -> Result<Vec<u8>> {
    check_size("a scatter plot", size, size)?;
    let pairs = |what: &str, v: &[f32]| -> Result<()> {
        if v.is_empty() || !v.len().is_multiple_of(2) {
            return Err(Error::Shape(format!(
                "scatter plot {:?}: the {what} are {} values; give 2-D points [n, 2], at least one",
                plot.title,
                v.len()
            )));
        }
        Ok(())
    };
    pairs("points", plot.points)?;
    if let Some(t) = plot.target {
        pairs("target's points", t)?;
    }
    let r = f64::from(plot.range);
    if !(r.is_finite() && r > 0.0) {
        return Err(Error::Config(format!(
            "scatter plot {:?}: the axes' range {} is not a positive number",
            plot.title, plot.range
        )));
    }
    let (w, h) = (size as usize, size as usize);
    let mut rgb = vec![255u8; w * h * 3];
    let text = TextSizes::for_picture(size, size);
    {
        let root = Canvas::new(&mut rgb, (size, size))?.into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        // The header: the title, and the legend under it, where it cannot cover a point.
        let header = (text.title * 1.5 + text.tick * 2.0).round() as u32;
        let (top, body) = root.split_vertically(header);
        draw_title(&top, plot.title, &text)?;
        let on_chart = |v: &[f32]| -> (Vec<(f64, f64)>, usize) {
            let mut inside = Vec::with_capacity(v.len() / 2);
            for p in v.chunks_exact(2) {
                let (x, y) = (f64::from(p[0]), f64::from(p[1]));
                // Points off the chart are left out (a backend draws outside the plot area).
                if x.abs() <= r && y.abs() <= r {
                    inside.push((x, y));
                }
            }
            let off = v.len() / 2 - inside.len();
            (inside, off)
        };
        let label = |what: &str, total: usize, off: usize| {
            if off == 0 {
                format!("{what} ({total})")
            } else {
                format!("{what} ({total}, {off} off the chart)")
            }
        };
        let (generated, generated_off) = on_chart(plot.points);
        let mut legend = vec![(
            label("generated", plot.points.len() / 2, generated_off),
            GENERATED_COLOUR,
        )];
        let target = plot.target.map(on_chart);
        if let (Some((_, off)), Some(t)) = (&target, plot.target) {
            legend.push((label("target", t.len() / 2, *off), TARGET_COLOUR));
        }
        draw_legend_row(&top, &legend, &text)?;

        let axis = Axis {
            lo: -r,
            hi: r,
            log: false,
        };
        let ticks = axis.ticks(6, false);
        let y_area = widest(&root, &ticks, &text)? + (text.desc * 2.0) as u32 + 8;
        let x_area = (text.tick * 1.6 + text.desc * 1.8) as u32 + 4;
        // Margins that make the plot area square, so circles in the data look round.
        let margin = 12u32;
        let free_w = size.saturating_sub(y_area + 2 * margin);
        let free_h = size.saturating_sub(header + x_area + 2 * margin);
        let side = free_w.min(free_h).max(1);
        let mut chart = ChartBuilder::on(&body)
            .margin_top(margin)
            .margin_left(margin + (free_w - side) / 2)
            .margin_bottom(margin + free_h - side)
            .margin_right(margin + (free_w - side).div_ceil(2))
            .x_label_area_size(x_area)
            .y_label_area_size(y_area)
            .build_cartesian_2d(axis.clone(), axis)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(6)
            .y_labels(6)
            .x_desc("x")
            .y_desc("y")
            .label_style((FONT, text.tick))
            .axis_desc_style((FONT, text.desc))
            .draw()
            .map_err(drawing)?;
        // Generated points a little larger and darker than the target's, which only sketch
        // where they should be.
        if let Some((points, _)) = target {
            let (r, g, b) = TARGET_COLOUR;
            let faint = RGBColor(r, g, b).mix(0.25).filled();
            let radius = (size / 500).max(1);
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, radius, faint)))
                .map_err(drawing)?;
        }
        let (r, g, b) = GENERATED_COLOUR;
        // Fainter the more there are, so a dense region still shows as denser.
        let alpha = (0.6 * (500.0 / generated.len().max(1) as f64).sqrt()).clamp(0.15, 0.6);
        let dots = RGBColor(r, g, b).mix(alpha).filled();
        let radius = (size / 300).max(1);
        chart
            .draw_series(generated.iter().map(|&p| Circle::new(p, radius, dots)))
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    crate::output::rgb_png(w, h, &rgb)
}

/// One entry of a training run's loss log.
#[derive(Clone, Debug, PartialEq)]
pub struct LossPoint {
    /// The step the loss was read at.
    pub step: u64,
    /// The batch's mean loss.
    pub loss: f64,
    /// The mean loss of the batch's samples in ten bins of t (`[0, 0.1)`, ..., `[0.9, 1]`);
    /// `None` where the batch had no sample in that bin.
    pub t_bins: Vec<Option<f64>>,
}

/// The training loss curve: loss against step (log y, a thick black line), plus the per-t-bin
/// losses as thinner lines coloured from dark blue (t near 0) to yellow (t near 1), broken where
/// a bin is `None`; a legend ("loss", "t in [0.0, 0.1)", ...) beside the plot; the title above.
///
/// Refused: an empty log, a loss or bin loss that is not finite or not positive (a log axis
/// cannot show it; the error names the step), a size outside [`MIN_SIDE`]..=[`MAX_SIDE`].
pub fn loss_curve_png(log: &[LossPoint], title: &str, width: u32, height: u32) -> Result<Vec<u8>> {
    check_size("a loss curve", width, height)?;
    if log.is_empty() {
        return Err(Error::Config(format!(
            "loss curve {title:?}: the log is empty; a curve needs at least one logged step"
        )));
    }
    for p in log {
        let bad = |what: String, v: f64| {
            Error::Config(format!(
                "loss curve {title:?}: the {what} at step {} is {v}; a log axis shows only \
                 finite positive losses",
                p.step
            ))
        };
        if !(p.loss.is_finite() && p.loss > 0.0) {
            return Err(bad("loss".into(), p.loss));
        }
        for (b, v) in p.t_bins.iter().enumerate() {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(bad(format!("loss of {}", t_bin_name(b, p.t_bins.len())), v));
            }
        }
    }
    let bins = log.iter().map(|p| p.t_bins.len()).max().unwrap_or(0);
    let few = log.len() <= 30;
    let mut lines = vec![Line {
        name: "loss".into(),
        segments: vec![log.iter().map(|p| (p.step as f64, p.loss)).collect()],
        bars: Vec::new(),
        colour: LOSS_COLOUR,
        stroke: 2,
        opacity: 1.0,
        on_top: true,
        marker: few.then_some(Marker::Circle),
    }];
    for b in 0..bins {
        // A bin that was empty at some step breaks its line there rather than bridging it.
        let mut segments = vec![Vec::new()];
        for p in log {
            match p.t_bins.get(b).copied().flatten() {
                Some(v) => segments.last_mut().expect("one").push((p.step as f64, v)),
                None if segments.last().is_some_and(|s| !s.is_empty()) => segments.push(Vec::new()),
                None => {}
            }
        }
        segments.retain(|s| !s.is_empty());
        let ramp = b * (T_BIN_COLOURS.len() - 1) / (bins - 1).max(1);
        lines.push(Line {
            name: t_bin_name(b, bins),
            segments,
            bars: Vec::new(),
            colour: T_BIN_COLOURS[ramp],
            stroke: 1,
            // Faded: one batch's loss in a tenth of t is noisy, and the mean loss is the line
            // to read.
            opacity: 0.6,
            on_top: false,
            marker: None,
        });
    }
    draw_lines(
        &Frame {
            title,
            x_label: "step",
            y_label: "loss",
            log_x: false,
            log_y: true,
        },
        &lines,
        width,
        height,
    )
}

/// `t in [0.3, 0.4)`; the last bin is closed (`t in [0.9, 1.0]`).
fn t_bin_name(b: usize, bins: usize) -> String {
    let (lo, hi) = (b as f64 / bins as f64, (b + 1) as f64 / bins as f64);
    let close = if b + 1 == bins { ']' } else { ')' };
    // Enough digits to tell the bins apart: one for ten bins, two for up to a hundred.
    let digits = if bins <= 10 { 1 } else { 2 };
    format!("t in [{lo:.digits$}, {hi:.digits$}{close}")
}

/// A bitmap that sets text itself: shapes go to plotters' `BitMapBackend`, text is laid out
/// and rasterised here with ab_glyph (pen advance, side bearing and kerning per glyph,
/// anti-aliased), anchored and rotated as plotters asks.
struct Canvas<'a> {
    bitmap: BitMapBackend<'a>,
    font: FontRef<'static>,
}

impl<'a> Canvas<'a> {
    fn new(rgb: &'a mut [u8], size: (u32, u32)) -> Result<Canvas<'a>> {
        register_font()?;
        let font = FontRef::try_from_slice(DEJAVU_SANS).map_err(|_| broken_font())?;
        Ok(Canvas {
            bitmap: BitMapBackend::with_buffer(rgb, size),
            font,
        })
    }

    /// The text's width (pen advance and kerning) and height (ascent to descent) at `px`.
    fn layout(&self, text: &str, px: f64) -> (f32, f32) {
        let font = self.font.as_scaled(PxScale::from(px as f32));
        let mut width = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                width += font.kern(p, id);
            }
            width += font.h_advance(id);
            previous = Some(id);
        }
        (width, font.ascent() - font.descent())
    }
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        colour: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_pixel(point, colour)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.bitmap.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = self.layout(text, style.size());
        Ok((w.ceil() as u32, h.ceil() as u32))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let colour = style.color();
        if colour.alpha == 0.0 {
            return Ok(());
        }
        let (width, height) = self.layout(text, style.size());
        let anchor = style.anchor();
        // The text's top left corner relative to `pos`, before rotation, as plotters anchors.
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        let font = self.font.as_scaled(PxScale::from(style.size() as f32));
        let baseline = dy + font.ascent();
        let turn = style.transform();
        let (w, h) = self.get_size();
        let mut caret = dx;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                caret += font.kern(p, id);
            }
            previous = Some(id);
            let glyph = id.with_scale_and_position(font.scale(), point(caret, baseline));
            caret += font.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue; // a space
            };
            let bounds = outline.px_bounds();
            let mut coverage = Vec::new();
            outline.draw(|x, y, c| coverage.push((x, y, c)));
            for (x, y, c) in coverage {
                if c <= 0.0 {
                    continue;
                }
                let (x, y) = turn.transform(
                    (bounds.min.x + x as f32).round() as i32,
                    (bounds.min.y + y as f32).round() as i32,
                );
                let (x, y) = (pos.0 + x, pos.1 + y);
                if (0..w as i32).contains(&x) && (0..h as i32).contains(&y) {
                    let alpha = colour.alpha * f64::from(c.min(1.0));
                    self.bitmap
                        .draw_pixel((x, y), BackendColor { alpha, ..colour })?;
                }
            }
        }
        Ok(())
    }
}

fn broken_font() -> Error {
    Error::Io(
        "the embedded font (assets/fonts/DejaVuSans.ttf) is not a font ab_glyph can read; the \
         build is broken"
            .into(),
    )
}

/// Register the embedded font under [`FONT`], once per process: plotters looks fonts up by
/// family before it asks the backend to set the text.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(broken_font())
    }
}

/// A drawing failure of plotters, as this crate's error.
fn drawing<E: std::fmt::Display>(e: E) -> Error {
    Error::Io(format!("drawing a chart: {e}"))
}

fn check_size(what: &str, width: u32, height: u32) -> Result<()> {
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(Error::Config(format!(
            "{what} of {width}x{height} pixels: too small for its labels; give at least \
             {MIN_SIDE}x{MIN_SIDE}"
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::TooLarge(format!(
            "{what} of {width}x{height} pixels; at most {MAX_SIDE}x{MAX_SIDE}"
        )));
    }
    Ok(())
}

fn check_series(s: &Series, log_x: bool, log_y: bool) -> Result<()> {
    let name = &s.name;
    if s.points.is_empty() {
        return Err(Error::Config(format!(
            "series {name:?} has no points; give it at least one or leave it out"
        )));
    }
    for (i, &(x, y)) in s.points.iter().enumerate() {
        if !(x.is_finite() && y.is_finite()) {
            return Err(Error::NonFinite(format!(
                "series {name:?}: point {i} is ({x}, {y}); a chart shows only finite values"
            )));
        }
        for (log, axis, v) in [(log_x, "x", x), (log_y, "y", y)] {
            if log && v <= 0.0 {
                return Err(Error::Config(format!(
                    "series {name:?}: point {i} has {axis} = {v}, which a log {axis} axis cannot \
                     show; leave the point out or use a linear {axis} axis"
                )));
            }
        }
    }
    if let Some(spread) = &s.spread {
        if spread.len() != s.points.len() {
            return Err(Error::Shape(format!(
                "series {name:?}: {} error bars for {} points; give one per point",
                spread.len(),
                s.points.len()
            )));
        }
        if let Some((i, d)) = spread
            .iter()
            .enumerate()
            .find(|(_, d)| !(d.is_finite() && **d >= 0.0))
        {
            return Err(Error::Config(format!(
                "series {name:?}: the error bar of point {i} is {d}; give a finite half-width \
                 of at least 0"
            )));
        }
    }
    Ok(())
}

/// The text sizes of a picture, in pixels, scaled with its smaller side.
struct TextSizes {
    title: f64,
    desc: f64,
    tick: f64,
}

impl TextSizes {
    fn for_picture(width: u32, height: u32) -> TextSizes {
        let tick = (f64::from(width.min(height)) / 36.0).clamp(11.0, 22.0);
        TextSizes {
            title: tick * 1.4,
            desc: tick * 1.15,
            tick,
        }
    }
}

/// The axes' labels and scales of a line chart.
struct Frame<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    log_y: bool,
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Cross,
}

impl Marker {
    const ALL: [Marker; 3] = [Marker::Circle, Marker::Triangle, Marker::Cross];
}

/// A line as drawn: its pieces (a gap between them), error bars `(x, y, half-width)`, style.
struct Line {
    name: String,
    segments: Vec<Vec<(f64, f64)>>,
    bars: Vec<(f64, f64, f64)>,
    colour: (u8, u8, u8),
    stroke: u32,
    /// 1: opaque; less lets the lines under it show.
    opacity: f64,
    /// Drawn after the lines without it (the legend keeps the given order).
    on_top: bool,
    marker: Option<Marker>,
}

impl Line {
    fn colour(&self) -> RGBColor {
        let (r, g, b) = self.colour;
        RGBColor(r, g, b)
    }
}

/// Draw `lines` (already checked: finite, positive on log axes) on one chart.
fn draw_lines(frame: &Frame, lines: &[Line], width: u32, height: u32) -> Result<Vec<u8>> {
    let points = || lines.iter().flat_map(|l| l.segments.iter().flatten());
    let bar_ends = || {
        lines
            .iter()
            .flat_map(|l| &l.bars)
            .flat_map(|&(_, y, d)| [y - d, y + d])
    };
    let x = Axis::fitted(points().map(|p| p.0), frame.log_x);
    // A bar that reaches below zero on a log axis is cut at the axis: its end cannot be shown.
    let y_values = points()
        .map(|p| p.1)
        .chain(bar_ends().filter(|v| v.is_finite() && (!frame.log_y || *v > 0.0)));
    let y = Axis::fitted(y_values, frame.log_y);
    let text = TextSizes::for_picture(width, height);
    let (w, h) = (width as usize, height as usize);
    let mut rgb = vec![255u8; w * h * 3];
    {
        let root = Canvas::new(&mut rgb, (width, height))?.into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        // The legend goes to the right of the plot, where it cannot cover a line.
        let swatch = (text.tick * 2.4) as u32;
        let mut names_w = 0;
        for l in lines {
            names_w = names_w.max(text_width(&root, &l.name, text.tick)?);
        }
        let legend_w = (names_w + swatch + 44).min(width / 3);
        let (plot_area, legend_area) = root.split_horizontally(width - legend_w);
        let (x_labels, y_labels) = (
            ((width - legend_w) / 70).clamp(3, 12) as usize,
            (height / 60).clamp(3, 12) as usize,
        );
        let y_area = widest(&root, &y.ticks(y_labels, false), &text)? + (text.desc * 2.0) as u32;
        let x_area = (text.tick * 1.6 + text.desc * 1.8) as u32 + 4;
        let title_h = (text.title * 1.8) as u32;
        let (title, title_px) = fit_text(&plot_area, frame.title, text.title, text.tick)?;
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .caption(&title, (FONT, title_px))
            .x_label_area_size(x_area)
            .y_label_area_size(y_area)
            .build_cartesian_2d(x, y.clone())
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_labels(x_labels)
            .y_labels(y_labels)
            .x_desc(frame.x_label)
            .y_desc(frame.y_label)
            .label_style((FONT, text.tick))
            .axis_desc_style((FONT, text.desc))
            .bold_line_style(RGBColor(220, 220, 220))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()
            .map_err(drawing)?;
        let marker_size = |l: &Line| {
            let n: usize = l.segments.iter().map(Vec::len).sum();
            if n > 60 {
                2
            } else {
                (text.tick / 3.5).round() as i32
            }
        };
        let (under, over): (Vec<&Line>, Vec<&Line>) = lines.iter().partition(|l| !l.on_top);
        for l in under.into_iter().chain(over) {
            let style = l.colour().mix(l.opacity).stroke_width(l.stroke);
            let bar_style = l.colour().stroke_width(1);
            let cap = marker_size(l) + 1;
            chart
                .draw_series(l.bars.iter().map(|&(bx, by, d)| {
                    let (lo, hi) = (y.clamp(by - d), y.clamp(by + d));
                    PathElement::new(vec![(bx, lo), (bx, hi)], bar_style)
                }))
                .map_err(drawing)?;
            chart
                .draw_series(l.bars.iter().flat_map(|&(bx, by, d)| {
                    [by - d, by + d].map(|end| {
                        EmptyElement::at((bx, y.clamp(end)))
                            + PathElement::new(vec![(-cap, 0), (cap, 0)], bar_style)
                    })
                }))
                .map_err(drawing)?;
            for seg in &l.segments {
                chart
                    .draw_series(LineSeries::new(seg.iter().copied(), style))
                    .map_err(drawing)?;
                if let Some(marker) = l.marker {
                    let size = marker_size(l);
                    chart
                        .draw_series(seg.iter().map(|&p| marker_at(p, marker, size, l.colour())))
                        .map_err(drawing)?;
                }
            }
        }
        // The legend's entries, from the top of the plot down, framed.
        let row = (text.tick * 1.6).round() as i32;
        let top = title_h as i32 + 12;
        let (left, right) = (4, legend_w as i32 - 10);
        // As many entries as fit in the height; the rest are counted on the last row.
        let fit = ((height as i32 - top - row) / row).max(1) as usize;
        let (shown, hidden) = if lines.len() > fit {
            (&lines[..fit - 1], lines.len() + 1 - fit)
        } else {
            (lines, 0)
        };
        let rows = shown.len() + usize::from(hidden > 0);
        let bottom = top + row * rows as i32 + row / 2;
        legend_area
            .draw(&Rectangle::new(
                [(left, top), (right, bottom)],
                RGBColor(200, 200, 200).stroke_width(1),
            ))
            .map_err(drawing)?;
        let font = (FONT, text.tick)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        let row_y = |i: usize| top + row / 2 + row / 4 + row * i as i32;
        if hidden > 0 {
            let more = format!("… and {hidden} more");
            legend_area
                .draw(&Text::new(
                    more,
                    (left + 8, row_y(shown.len())),
                    font.clone(),
                ))
                .map_err(drawing)?;
        }
        for (i, l) in shown.iter().enumerate() {
            let cy = row_y(i);
            let (x0, x1) = (left + 8, left + 8 + swatch as i32);
            legend_area
                .draw(&PathElement::new(
                    vec![(x0, cy), (x1, cy)],
                    l.colour().stroke_width(l.stroke),
                ))
                .map_err(drawing)?;
            if let Some(marker) = l.marker {
                legend_area
                    .draw(&marker_at(
                        ((x0 + x1) / 2, cy),
                        marker,
                        (text.tick / 3.5).round() as i32,
                        l.colour(),
                    ))
                    .map_err(drawing)?;
            }
            legend_area
                .draw(&Text::new(l.name.clone(), (x1 + 8, cy), font.clone()))
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    crate::output::rgb_png(w, h, &rgb)
}

/// A marker of `size` pixels at `at`, as one element whatever its shape.
fn marker_at<'b, C: Clone + 'static>(
    at: C,
    marker: Marker,
    size: i32,
    colour: RGBColor,
) -> DynElement<'static, Canvas<'b>, C> {
    match marker {
        Marker::Circle => Circle::new(at, size, colour.filled()).into_dyn(),
        Marker::Triangle => TriangleMarker::new(at, size + 1, colour.filled()).into_dyn(),
        Marker::Cross => Cross::new(at, size, colour.stroke_width(2)).into_dyn(),
    }
}

/// The title, centred in `area`'s top line.
fn draw_title(area: &DrawingArea<Canvas, Shift>, title: &str, text: &TextSizes) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let (title, px) = fit_text(area, title, text.title, text.tick)?;
    let font = (FONT, px)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    area.draw(&Text::new(title, (w as i32 / 2, 8), font))
        .map_err(drawing)
}

/// `text` at `px`, or smaller (down to `min_px`) where that is too wide for `area`, and at
/// `min_px` with its start cut off ("…" instead) where even that is too wide: the end of a
/// title (a path's file name, the step) tells more than its beginning.
fn fit_text(
    area: &DrawingArea<Canvas, Shift>,
    text: &str,
    px: f64,
    min_px: f64,
) -> Result<(String, f64)> {
    let room = area.dim_in_pixel().0.saturating_sub(24);
    let width = text_width(area, text, px)?;
    if width <= room {
        return Ok((text.to_string(), px));
    }
    let shrunk = (px * f64::from(room) / f64::from(width)).max(min_px);
    let mut cut: Vec<char> = text.chars().collect();
    let mut fitted = text.to_string();
    while !cut.is_empty() && text_width(area, &fitted, shrunk)? > room {
        cut.remove(0);
        fitted = format!("…{}", cut.iter().collect::<String>());
    }
    Ok((fitted, shrunk))
}

/// A one-line legend of dots and names, centred under the title.
fn draw_legend_row(
    area: &DrawingArea<Canvas, Shift>,
    entries: &[(String, (u8, u8, u8))],
    text: &TextSizes,
) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let gap = (text.tick * 2.0) as u32;
    let dot = (text.tick / 3.0).round() as i32;
    let mut widths = Vec::new();
    for (name, _) in entries {
        widths.push(text_width(area, name, text.tick)? + 3 * dot as u32 + 4);
    }
    let total: u32 = widths.iter().sum::<u32>() + gap * (entries.len() as u32 - 1);
    let mut x = (w.saturating_sub(total) / 2) as i32;
    let cy = h as i32 - (text.tick * 0.9) as i32;
    let font = (FONT, text.tick)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for ((name, (r, g, b)), width) in entries.iter().zip(widths) {
        area.draw(&Circle::new(
            (x + dot, cy),
            dot,
            RGBColor(*r, *g, *b).filled(),
        ))
        .map_err(drawing)?;
        area.draw(&Text::new(name.clone(), (x + 3 * dot, cy), font.clone()))
            .map_err(drawing)?;
        x += (width + gap) as i32;
    }
    Ok(())
}

fn text_width(area: &DrawingArea<Canvas, Shift>, text: &str, size: f64) -> Result<u32> {
    let (w, _) = area
        .estimate_text_size(text, &(FONT, size).into_text_style(area))
        .map_err(drawing)?;
    Ok(w)
}

/// The width of the widest tick label of `ticks`.
fn widest(area: &DrawingArea<Canvas, Shift>, ticks: &[f64], text: &TextSizes) -> Result<u32> {
    let mut most = 0;
    for &t in ticks {
        most = most.max(text_width(area, &tick_label(t), text.tick)?);
    }
    Ok(most)
}

/// An axis from `lo` to `hi` (`0 < lo` when logarithmic), with ticks at round numbers.
#[derive(Clone, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    /// The axis over `values` (finite, positive when `log`), with a margin of 5% each side.
    fn fitted(values: impl Iterator<Item = f64>, log: bool) -> Axis {
        let to = |v: f64| if log { v.ln() } else { v };
        let from = |v: f64| if log { v.exp() } else { v };
        let (lo, hi) = values
            .map(to)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = if hi > lo {
            0.05 * (hi - lo)
        } else if log {
            std::f64::consts::LN_2
        } else {
            (lo.abs() * 0.1).max(1.0)
        };
        // Within what f64 holds with room to spare, so the span, its logarithm and the ticks
        // stay finite and few for any finite input.
        let (floor, ceiling) = if log {
            (f64::MIN_POSITIVE.ln() + 1.0, f64::MAX.ln() - 1.0)
        } else {
            (-1e300, 1e300)
        };
        let (lo, hi) = (
            (lo - pad).clamp(floor, ceiling),
            (hi + pad).clamp(floor, ceiling),
        );
        Axis {
            lo: from(lo),
            hi: from(hi.max(lo + 1e-300)),
            log,
        }
    }

    /// `v` moved into the axis' range.
    fn clamp(&self, v: f64) -> f64 {
        if v.is_nan() {
            self.lo
        } else {
            v.clamp(self.lo, self.hi)
        }
    }

    /// At most about `max` ticks at round numbers (1, 2, 5 times a power of ten), and with
    /// `minor` the unlabelled ones between them too.
    fn ticks(&self, max: usize, minor: bool) -> Vec<f64> {
        let max = max.max(2);
        if !self.log {
            let step = nice_step(self.hi - self.lo, max);
            let mut ticks = steps_within(self.lo, self.hi, step);
            if minor {
                ticks.extend(steps_within(self.lo, self.hi, step / 5.0));
            }
            return ticks;
        }
        // Bounded by f64's own decades, whatever the axis holds.
        let (first, last) = (
            self.lo.log10().floor().clamp(-330.0, 330.0) as i32,
            self.hi.log10().ceil().clamp(-330.0, 330.0) as i32,
        );
        // `m * 10^k` for each mantissa, at the decades k that are multiples of `every`.
        let within = |mantissas: &[f64], every: i32| -> Vec<f64> {
            (first..=last)
                .filter(|k| k.rem_euclid(every) == 0)
                .flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)))
                .filter(|v| (self.lo..=self.hi).contains(v))
                .collect()
        };
        let one_two_five = within(&[1.0, 2.0, 5.0], 1);
        if one_two_five.len() < 2 {
            // Less than a decade: round numbers of a linear axis read better.
            let step = nice_step(self.hi - self.lo, max);
            let mut ticks = steps_within(self.lo, self.hi, step);
            if minor {
                ticks.extend(steps_within(self.lo, self.hi, step / 5.0));
            }
            return ticks;
        }
        if one_two_five.len() <= max {
            let mut ticks = one_two_five;
            if minor {
                ticks.extend(within(&[3.0, 4.0, 6.0, 7.0, 8.0, 9.0], 1));
            }
            return ticks;
        }
        // Too many: powers of ten, every 1, 2, 5, 10, ... decades; unlabelled lines at the
        // decades between (or at 2 to 9 times each, when every decade is labelled).
        let every = nice_step(f64::from(last - first), max).max(1.0) as i32;
        let mut ticks = within(&[1.0], every);
        if minor {
            if every == 1 {
                ticks.extend(within(&[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 1));
            } else {
                let minor_every = if every >= 10 { every / 10 } else { 1 };
                ticks.extend(within(&[1.0], minor_every));
            }
        }
        ticks
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `span` into at most about `max`.
fn nice_step(span: f64, max: usize) -> f64 {
    let raw = span / max as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The multiples of `step` in `[lo, hi]`.
fn steps_within(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    // Bounded: a step from `nice_step` cuts the span into a few dozen at most.
    (first..=last.min(first + 1000))
        .map(|k| k as f64 * step)
        .collect()
}

/// A tick's label: as few digits as show it (`0.3`, not `0.30000000000000004`), powers of ten
/// beyond 1e5 or below 1e-3 in exponent form (`2e-4`).
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        let digits = (0..6)
            .find(|&d| {
                let s = format!("{v:.d$e}");
                s.parse::<f64>().is_ok_and(|p| (p - v).abs() <= a * 1e-9)
            })
            .unwrap_or(6);
        return format!("{v:.digits$e}");
    }
    let digits = (0..10)
        .find(|&d| {
            let s = format!("{v:.d$}");
            s.parse::<f64>().is_ok_and(|p| (p - v).abs() <= a * 1e-9)
        })
        .unwrap_or(10);
    format!("{v:.digits$}")
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi, v) = if self.log {
            (self.lo.ln(), self.hi.ln(), value.ln())
        } else {
            (self.lo, self.hi, *value)
        };
        // Clamped a little beyond the axis, so a stray value cannot send a line to i32::MAX.
        let f = ((v - lo) / (hi - lo)).clamp(-1.0, 2.0);
        let f = if f.is_nan() { 0.0 } else { f };
        (f64::from(limit.0) + f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        self.ticks(hint.bold_points(), hint.weight().allow_light_points())
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        tick_label(*value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(tick_label(-1.5), "-1.5");
        assert_eq!(tick_label(2e-4), "2e-4");
        assert_eq!(tick_label(1e6), "1e6");
    }

    #[test]
    fn log_ticks_are_one_two_five() {
        let axis = Axis {
            lo: 0.9,
            hi: 110.0,
            log: true,
        };
        assert_eq!(
            axis.ticks(10, false),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        let wide = Axis {
            lo: 1e-6,
            hi: 1e6,
            log: true,
        };
        assert!(
            wide.ticks(5, false).len() <= 7,
            "{:?}",
            wide.ticks(5, false)
        );
    }
}
