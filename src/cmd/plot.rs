//! `genesis plot`: draw a run's loss curves as an SVG.

use std::path::PathBuf;

use super::outln;
use anyhow::Result;
use argh::FromArgs;
use genesis::plot::{self, PlotOptions};
use genesis::util::write_atomic;

/// Draw a run's train and validation loss against training tokens as an SVG.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "plot",
    example = "genesis plot runs/shakespeare\ngenesis plot runs/shakespeare --out shakespeare.svg --linear",
    note = "Reads RUN/metrics.jsonl, which `genesis train --out RUN` appends to as it goes (RUN may also be that file itself); plotting a run that is still training is fine. When a resumed run logged a step twice, the last record counts.\n\nDrawn: the train loss of every step as a thin light line (beyond 2000 steps thinned to each stretch's first, lowest and highest value, so spikes stay visible) and a centred moving average of it (a window growing from the first steps to about 2% of the run) as a bold line, the validation loss as a line with a marker per evaluation (the best one ringed and labelled), and steps skipped for a non-finite loss as red marks on the x axis. x is training tokens; y is the loss in nats per token, on a log scale when the largest loss is more than twice the smallest (--linear forces a linear one). The title names the run directory and the model; the line beneath gives steps, tokens and the best validation loss with its step.\n\nWrites RUN/loss.svg (or --out) atomically and prints its path; open it in a browser."
)]
pub struct PlotCmd {
    /// run directory (the --out of genesis train)
    #[argh(positional)]
    run: PathBuf,
    /// where to write the SVG (default RUN/loss.svg)
    #[argh(option)]
    out: Option<PathBuf>,
    /// linear loss axis even when a log axis would be chosen
    #[argh(switch)]
    linear: bool,
}

/// Reads the metrics, renders and writes the SVG, then prints where it went and the headline numbers.
pub fn run(c: PlotCmd) -> Result<()> {
    let data = plot::load_run(&c.run)?;
    let opts = PlotOptions { title: plot::run_name(&c.run), linear: c.linear };
    let svg = plot::render_svg(&data, &opts);
    let out = c.out.unwrap_or_else(|| {
        let dir = if c.run.is_file() { c.run.parent().map(PathBuf::from).unwrap_or_default() } else { c.run.clone() };
        dir.join("loss.svg")
    });
    write_atomic(&out, svg.as_bytes())?;
    outln!("{}", out.display());
    let last = data.train.last().expect("load_run refuses runs without train steps");
    let best = data.best_val().map_or_else(
        || "no validation loss yet".to_string(),
        |b| format!("best val loss {:.4} at step {}", b.loss, b.step),
    );
    eprintln!("{} train steps up to step {} (train loss {:.4}), {best}", data.train.len(), last.step, last.loss);
    Ok(())
}
