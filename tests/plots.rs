//! Charts ([`rectiflow::plot`]): each PNG is decoded and read back, so the tests see what a
//! person would (a white background, each series' colour, text in the title's place, points in
//! the right quadrant); bad input is refused with an error that names it; and a training run
//! writes `loss.png` and a 2-D `samples.png` on white. The pictures are also left in Cargo's
//! test directory (`target/tmp/plots`) to look at.

mod common;

use common::gpu;
use common::tiny::temp_dir;
use rectiflow::data::{self, DataSpec, Toy};
use rectiflow::plot::{
    line_chart_png, loss_curve_png, scatter_png, LineChart, LossPoint, ScatterPlot, Series,
    GENERATED_COLOUR, PALETTE, TARGET_COLOUR,
};
use rectiflow::train::run::{LOSS_CURVE_FILE, METRICS_FILE, SAMPLES_FILE};
use rectiflow::train::{ModelKind, Run, RunEnd, RunOptions, TrainConfig};

/// A decoded RGB(A) picture.
struct Picture {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Picture {
    fn decode(png_bytes: &[u8]) -> Picture {
        let decoder = png::Decoder::new(png_bytes);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("a chart in {other:?}"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Picture {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }

    /// How many pixels in the rectangle `[x0, x1) x [y0, y1)` satisfy `test`.
    fn count(
        &self,
        (x0, x1): (usize, usize),
        (y0, y1): (usize, usize),
        test: impl Fn([u8; 3]) -> bool,
    ) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| test(self.at(x, y)))
            .count()
    }

    fn count_all(&self, test: impl Fn([u8; 3]) -> bool) -> usize {
        self.count((0, self.width), (0, self.height), test)
    }
}

/// Leave a picture where a person can look at it.
fn keep(name: &str, png_bytes: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png_bytes).unwrap();
}

fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.into(),
        points,
        spread: None,
    }
}

fn exactly((r, g, b): (u8, u8, u8)) -> impl Fn([u8; 3]) -> bool {
    move |p| p == [r, g, b]
}

const WHITE: [u8; 3] = [255, 255, 255];

#[test]
fn a_line_chart_draws_each_series_in_its_colour_with_a_title() {
    let lines = [
        series(
            "euler",
            (1..=6).map(|i| (f64::from(i), f64::from(i))).collect(),
        ),
        series(
            "heun",
            (1..=6)
                .map(|i| (f64::from(i), 7.0 - f64::from(i)))
                .collect(),
        ),
        Series {
            spread: Some(vec![0.5; 6]),
            ..series("rk45", (1..=6).map(|i| (f64::from(i), 3.0)).collect())
        },
    ];
    let chart = LineChart {
        title: "error against steps",
        x_label: "steps",
        y_label: "error",
        log_x: false,
        log_y: false,
        series: &lines,
    };
    let png_bytes = line_chart_png(&chart, 800, 500).unwrap();
    keep("line_chart.png", &png_bytes);
    let pic = Picture::decode(&png_bytes);
    assert_eq!((pic.width, pic.height), (800, 500));
    assert_eq!(pic.at(0, 0), WHITE);
    assert_eq!(pic.at(799, 499), WHITE);
    for (i, s) in lines.iter().enumerate() {
        let n = pic.count_all(exactly(PALETTE[i]));
        assert!(n > 300, "{}: {n} pixels of {:?}", s.name, PALETTE[i]);
    }
    // The title: dark pixels across the middle of the top strip.
    let title = pic.count((250, 550), (0, 40), |p| p.iter().all(|&c| c < 100));
    assert!(title > 100, "{title} dark pixels where the title goes");
    // The legend sits to the right of the plot: its names are dark pixels there.
    let legend = pic.count((650, 800), (40, 200), |p| p.iter().all(|&c| c < 100));
    assert!(legend > 100, "{legend} dark pixels where the legend goes");
}

#[test]
fn log_axes_take_positive_values_and_refuse_others_naming_the_series() {
    let steps = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
    let good = [series(
        "euler",
        steps.iter().map(|&s| (s, 1.0 / s)).collect(),
    )];
    let chart = LineChart {
        title: "error against steps",
        x_label: "steps",
        y_label: "error",
        log_x: true,
        log_y: true,
        series: &good,
    };
    let png_bytes = line_chart_png(&chart, 640, 480).unwrap();
    keep("log_chart.png", &png_bytes);
    assert!(Picture::decode(&png_bytes).count_all(exactly(PALETTE[0])) > 100);

    let bad = [
        good[0].clone(),
        series("heun", vec![(1.0, 0.5), (2.0, 0.0)]),
    ];
    let e = line_chart_png(
        &LineChart {
            series: &bad,
            ..chart
        },
        640,
        480,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"heun\"") && e.to_string().contains("log y"),
        "{e}"
    );
    let bad_x = [series("rk45", vec![(-1.0, 0.5)])];
    let e = line_chart_png(
        &LineChart {
            series: &bad_x,
            ..chart
        },
        640,
        480,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"rk45\"") && e.to_string().contains("log x"),
        "{e}"
    );
    // A linear axis takes them.
    let linear = LineChart {
        series: &bad,
        log_x: false,
        log_y: false,
        ..chart
    };
    assert!(line_chart_png(&linear, 640, 480).is_ok());
}

#[test]
fn bad_charts_are_refused_not_drawn() {
    let chart = LineChart {
        title: "t",
        x_label: "x",
        y_label: "y",
        log_x: false,
        log_y: false,
        series: &[],
    };
    let e = line_chart_png(&chart, 640, 480).unwrap_err();
    assert!(e.to_string().contains("no series"), "{e}");
    let empty = [series("nothing", vec![])];
    let e = line_chart_png(
        &LineChart {
            series: &empty,
            ..chart
        },
        640,
        480,
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"nothing\" has no points"), "{e}");
    let nan = [series("nan", vec![(0.0, f64::NAN)])];
    let e = line_chart_png(
        &LineChart {
            series: &nan,
            ..chart
        },
        640,
        480,
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"nan\""), "{e}");
    let short = [Series {
        spread: Some(vec![1.0]),
        ..series("short", vec![(0.0, 1.0), (1.0, 2.0)])
    }];
    let e = line_chart_png(
        &LineChart {
            series: &short,
            ..chart
        },
        640,
        480,
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"short\""), "{e}");
    let one = [series("one", vec![(0.0, 1.0)])];
    let one_chart = LineChart {
        series: &one,
        ..chart
    };
    assert!(line_chart_png(&one_chart, 640, 480).is_ok());
    assert!(line_chart_png(&one_chart, 10, 480).is_err());
    assert!(line_chart_png(&one_chart, 640, 100_000).is_err());

    let plot = ScatterPlot {
        title: "t",
        points: &[],
        target: None,
        range: 3.0,
    };
    assert!(scatter_png(&plot, 256).is_err());
    assert!(scatter_png(
        &ScatterPlot {
            points: &[1.0, 2.0, 3.0],
            ..plot
        },
        256
    )
    .is_err());
    assert!(scatter_png(
        &ScatterPlot {
            points: &[1.0, 2.0],
            range: 0.0,
            ..plot
        },
        256
    )
    .is_err());
    assert!(scatter_png(
        &ScatterPlot {
            points: &[1.0, 2.0],
            range: f32::NAN,
            ..plot
        },
        256
    )
    .is_err());
    assert!(loss_curve_png(&[], "t", 640, 480).is_err());
}

fn is_generated([r, _, b]: [u8; 3]) -> bool {
    // Dark blue, blended over white or grey: blue well above red.
    i32::from(b) - i32::from(r) > 25 && b < 250
}

fn is_target([r, g, b]: [u8; 3]) -> bool {
    // Grey, lighter than the text and the axes.
    r == g && g == b && (150..250).contains(&r)
}

#[test]
fn a_scatter_plot_shows_the_target_faint_behind_the_points_where_they_are() {
    // Generated points around (1, 1), the target around (-1, -1): upper right and lower left.
    let jitter = |i: usize| (i % 7) as f32 * 0.02;
    let points: Vec<f32> = (0..500)
        .flat_map(|i| [1.0 + jitter(i), 1.0 - jitter(i / 7)])
        .collect();
    let target: Vec<f32> = (0..500)
        .flat_map(|i| [-1.0 + jitter(i), -1.0 - jitter(i / 7)])
        .collect();
    let plot = ScatterPlot {
        title: "moons, step 100",
        points: &points,
        target: Some(&target),
        range: 3.0,
    };
    let png_bytes = scatter_png(&plot, 512).unwrap();
    keep("scatter.png", &png_bytes);
    let pic = Picture::decode(&png_bytes);
    assert_eq!((pic.width, pic.height), (512, 512));
    assert_eq!(pic.at(0, 0), WHITE);
    assert_eq!(pic.at(511, 511), WHITE);
    let (cx, cy) = (pic.width / 2, pic.height / 2);
    let upper_right = ((cx, pic.width), (0, cy));
    let lower_left = ((0, cx), (cy, pic.height));
    let generated = pic.count(upper_right.0, upper_right.1, is_generated);
    let target_there = pic.count(lower_left.0, lower_left.1, is_target);
    assert!(generated > 50, "{generated} generated pixels upper right");
    assert!(target_there > 50, "{target_there} target pixels lower left");
    // Nothing generated lower left, no target upper right (below the legend).
    assert_eq!(pic.count(lower_left.0, lower_left.1, is_generated), 0);
    assert_eq!(pic.count(upper_right.0, (cy / 2, cy), is_target), 0);
    // The legend's dots are in the two colours.
    assert!(pic.count_all(exactly(GENERATED_COLOUR)) > 5);
    assert!(pic.count_all(exactly(TARGET_COLOUR)) > 5);
    // The title.
    let title = pic.count((150, 360), (0, 30), |p| p.iter().all(|&c| c < 100));
    assert!(title > 50, "{title} dark pixels where the title goes");
}

fn loss_log(n: u64) -> Vec<LossPoint> {
    (1..=n)
        .map(|i| {
            let step = i * 50;
            let loss = 2.0 / (1.0 + step as f64 / 200.0) + 0.3;
            LossPoint {
                step,
                loss,
                t_bins: (0..10)
                    .map(|b| (b != 9 || i % 4 != 0).then_some(loss * (0.5 + b as f64 * 0.12)))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn the_loss_curve_draws_the_loss_and_its_t_bins() {
    let log = loss_log(60);
    let png_bytes = loss_curve_png(&log, "checkerboard, mlp: loss", 900, 520).unwrap();
    keep("loss_curve.png", &png_bytes);
    let pic = Picture::decode(&png_bytes);
    assert_eq!((pic.width, pic.height), (900, 520));
    assert_eq!(pic.at(0, 0), WHITE);
    let black = pic.count_all(|p| p == [0, 0, 0]);
    assert!(
        black > 500,
        "{black} black pixels (the loss, thick, and the text)"
    );
    let mut bad = log.clone();
    bad[3].t_bins[2] = Some(0.0);
    let e = loss_curve_png(&bad, "t", 900, 520).unwrap_err();
    assert!(e.to_string().contains("step 200"), "{e}");
}

#[test]
fn a_toy_run_writes_its_loss_curve_and_samples_on_white() {
    let dir = temp_dir("plots-run").join("moons");
    let toy = data::toy("moons", 500, 0).unwrap();
    let mut model = ModelKind::Mlp.config(&[2], 0);
    (model.width, model.depth) = (16, 1);
    let config = TrainConfig {
        steps: 6,
        batch: 32,
        warmup: 0,
        ..TrainConfig::new(DataSpec::Toy(Toy::Moons), model)
    };
    let opts = RunOptions {
        log_every: 2,
        checkpoint_every: 0,
        sample_every: 0,
        grid_samples: Some(200),
        catch_signals: false,
    };
    let mut run =
        Run::create(gpu(), &dir, config.clone(), Some(&toy), false, opts.clone()).unwrap();
    let end = run.run(|_| {}).unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    drop(run);
    // Resumed, the curve still starts at the first segment's losses: metrics.json keeps them.
    let more = TrainConfig {
        steps: 10,
        ..config
    };
    let mut run = Run::open(gpu(), &dir)
        .unwrap()
        .resume(gpu(), more, Some(&toy), false, opts)
        .unwrap();
    assert!(matches!(run.run(|_| {}).unwrap(), RunEnd::Finished(_)));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(METRICS_FILE)).unwrap()).unwrap();
    let steps = |key: &str| -> Vec<u64> {
        metrics[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        (steps("earlier_log"), steps("log")),
        (vec![2, 4, 6], vec![8, 10])
    );
    let loss_png = std::fs::read(dir.join(LOSS_CURVE_FILE)).unwrap();
    keep("run_loss.png", &loss_png);
    let loss = Picture::decode(&loss_png);
    assert_eq!(loss.at(0, 0), WHITE);
    let samples_png = std::fs::read(dir.join(SAMPLES_FILE)).unwrap();
    keep("run_samples.png", &samples_png);
    let samples = Picture::decode(&samples_png);
    assert_eq!(samples.at(0, 0), WHITE);
    assert!(samples.count_all(is_generated) > 20);
    assert!(
        samples.count_all(is_target) > 20,
        "the toy's own points, faint"
    );
}

#[test]
fn extreme_charts_are_drawn_or_refused_without_panicking() {
    let names: Vec<String> = (0..25)
        .map(|i| format!("a rather long series name {i}"))
        .collect();
    let many: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(i, n)| series(n, vec![(0.0, i as f64), (1.0, i as f64)]))
        .collect();
    let huge = [series("huge", vec![(-1e308, -1e308), (1e308, 1e308)])];
    let same = [series("same", vec![(2.0, 3.0), (2.0, 3.0)])];
    let wide_log = [series("wide", vec![(1e-300, 1e-300), (1e300, 1e300)])];
    let tiny_log = [series("tiny", vec![(1.0, 1.0), (1.0001, 1.0001)])];
    for (case, (lines, log)) in [
        (&many[..], false),
        (&huge[..], false),
        (&same[..], false),
        (&same[..], true),
        (&wide_log[..], true),
        (&tiny_log[..], true),
    ]
    .into_iter()
    .enumerate()
    {
        let chart = LineChart {
            title: "a title much longer than the picture is wide, so that it has to be fitted in",
            x_label: "x",
            y_label: "y",
            log_x: log,
            log_y: log,
            series: lines,
        };
        for (w, h) in [(160, 160), (1200, 300)] {
            let png_bytes = line_chart_png(&chart, w, h)
                .unwrap_or_else(|e| panic!("{} at {w}x{h}: {e}", lines[0].name));
            assert_eq!(Picture::decode(&png_bytes).width, w as usize);
            keep(&format!("extreme_{case}_{w}x{h}.png"), &png_bytes);
        }
    }
    let far = [f32::MAX, f32::MIN, f32::NAN, 0.0, f32::INFINITY, 1.0];
    let png_bytes = scatter_png(
        &ScatterPlot {
            title: "",
            points: &far,
            target: Some(&far),
            range: 1e-30,
        },
        160,
    )
    .unwrap();
    assert_eq!(Picture::decode(&png_bytes).width, 160);
    let one = LossPoint {
        step: 1,
        loss: 1.0,
        t_bins: vec![None; 40],
    };
    assert!(loss_curve_png(&[one], "one", 160, 160).is_ok());
}
