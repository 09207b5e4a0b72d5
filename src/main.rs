//! The `genesis` command line: prepare data, train, sample, benchmark.

mod cmd;

use anyhow::Result;
use argh::FromArgs;

/// Genesis trains GPT-2-class language models from scratch and samples from them.
#[derive(FromArgs)]
#[argh(
    example = "genesis prepare wikitext-103\ngenesis prepare --input corpus.txt --name corpus\ngenesis train --model tiny --data corpus --out runs/first\ngenesis sample --checkpoint runs/first/step_00001000.ckpt --prompt \"Once upon\"",
    note = "Models (--model): tiny (tests), gpt2-124m, genesis-150m, gpt2-350m. Training, eval, sample and the benchmarks run on the GPU when one works (--device auto|cpu|cuda). GPU training is fp32 with TF32 matmuls by default, or bf16 mixed precision with train --precision bf16 (not yet verified on a GPU); eval and sample default to bf16 on the GPU. Every command has its own --help: genesis COMMAND --help.\n\nThe path: genesis doctor (is this machine ready?), genesis prepare, genesis train (resumes by itself; plot RUN draws its loss), genesis eval, genesis export (a Hugging Face GPT-2 directory to take home), genesis verify (after the download), genesis sample."
)]
struct Cli {
    /// worker threads for CPU work, at most 4 per core (default: all cores)
    #[argh(option)]
    threads: Option<usize>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Prepare(cmd::prepare::PrepareCmd),
    Data(cmd::data::DataCmd),
    Train(cmd::train::TrainCmd),
    Sample(cmd::sample::SampleCmd),
    Eval(cmd::eval::EvalCmd),
    Plot(cmd::plot::PlotCmd),
    Export(cmd::export::ExportCmd),
    Import(cmd::import::ImportCmd),
    Verify(cmd::verify::VerifyCmd),
    Doctor(cmd::doctor::DoctorCmd),
    Info(cmd::info::InfoCmd),
    Bench(cmd::bench::BenchCmd),
}

/// `--threads` beyond this many per core only add scheduling overhead (5000 threads took 72 s to
/// sample 3 tokens), so more is refused.
const MAX_THREADS_PER_CORE: usize = 4;

fn main() {
    let cli = parse_args();
    if let Err(e) = run(cli) {
        // A reader that stopped reading (`genesis eval ... | head -1`) is no failure.
        if e.chain().any(|c| c.is::<cmd::StdoutClosed>()) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The command line, parsed. `--help` prints the help on stdout and exits 0; an error prints argh's
/// message on stderr, then where the help is (`genesis train --help` when a subcommand was given,
/// not argh's `genesis --help`), and exits 1.
fn parse_args() -> Cli {
    let args: Vec<String> =
        std::env::args_os().map(|a| a.into_string()).collect::<Result<_, _>>().unwrap_or_else(|a| {
            eprintln!("error: an argument is not valid UTF-8: {}", a.to_string_lossy());
            std::process::exit(1)
        });
    let program = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("genesis")
        .to_string();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match Cli::from_args(&[&program], &rest) {
        Ok(cli) => cli,
        Err(exit) if exit.status.is_ok() => {
            println!("{}", exit.output);
            std::process::exit(0)
        }
        Err(exit) => {
            let help = match subcommand_path(&rest) {
                Some(sub) => format!("{program} {sub} --help"),
                None => format!("{program} --help"),
            };
            eprintln!("{}\nRun {help} for more information.", exit.output);
            std::process::exit(1)
        }
    }
}

/// The subcommand the arguments name (`train`, or `bench train` for the nested ones), if any: the
/// first word that is not an option of the top level (`--threads N`).
fn subcommand_path(args: &[&str]) -> Option<String> {
    let mut words = args.iter();
    let first = loop {
        match *words.next()? {
            "--threads" => {
                words.next();
            }
            w if w.starts_with('-') => {}
            w => break w,
        }
    };
    let name = |commands: &[&argh::CommandInfo], w: &str| commands.iter().any(|c| c.name == w);
    if !name(<Command as argh::SubCommands>::COMMANDS, first) {
        return None;
    }
    let nested: &[&argh::CommandInfo] = match first {
        "data" => <cmd::data::DataWhat as argh::SubCommands>::COMMANDS,
        "bench" => <cmd::bench::BenchWhat as argh::SubCommands>::COMMANDS,
        _ => &[],
    };
    match words.next() {
        Some(second) if name(nested, second) => Some(format!("{first} {second}")),
        _ => Some(first.to_string()),
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = MAX_THREADS_PER_CORE * cores;
        if n == 0 || n > most {
            anyhow::bail!(
                "--threads {n}: expected 1 to {most} ({MAX_THREADS_PER_CORE} per core; this machine has {cores}); \
                 leave it out to use every core"
            );
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    match cli.command {
        Command::Prepare(c) => cmd::prepare::run(c),
        Command::Data(c) => cmd::data::run(c),
        Command::Train(c) => cmd::train::run(c),
        Command::Sample(c) => cmd::sample::run(c),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Plot(c) => cmd::plot::run(c),
        Command::Export(c) => cmd::export::run(c),
        Command::Import(c) => cmd::import::run(c),
        Command::Verify(c) => cmd::verify::run(c),
        Command::Doctor(c) => cmd::doctor::run(c),
        Command::Info(c) => cmd::info::run(c),
        Command::Bench(c) => cmd::bench::run(c),
    }
}
