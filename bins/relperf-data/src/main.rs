//! `relperf-data fetch|verify [DATASET...]`: get the datasets of
//! relative-performer into a data folder, and check them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use relperf_data::{DatasetName, Fetcher, resolve_root, verify};

/// Fetch and verify MNIST, FashionMNIST and CIFAR10 for relative-performer.
///
/// The data folder is --data-dir, else $RELATIVE_PERFORMER_DATA, else ./data
/// (torchvision's layout: an existing folder of the PyTorch reference works).
#[derive(Debug, Parser)]
#[command(name = "relperf-data", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Get the datasets (files already there, download, then offline sources), then verify them.
    Fetch(Args),
    /// Check sizes, per-class counts and the official checksums.
    Verify(Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Datasets (MNIST, FashionMNIST, CIFAR10; any case). None: all three.
    #[arg(value_name = "DATASET", value_parser = parse_dataset)]
    datasets: Vec<DatasetName>,
    /// Data folder (default: $RELATIVE_PERFORMER_DATA, else ./data).
    #[arg(long = "data-dir", alias = "data_dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use only files already there and offline sources; no download.
    #[arg(long)]
    offline: bool,
}

fn parse_dataset(s: &str) -> Result<DatasetName, String> {
    s.parse::<DatasetName>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let (args, fetch) = match cli.command {
        Command::Fetch(a) => (a, true),
        Command::Verify(a) => (a, false),
    };
    let root = resolve_root(args.data_dir.as_deref());
    let names = if args.datasets.is_empty() {
        DatasetName::ALL.to_vec()
    } else {
        args.datasets
    };
    let fetcher = Fetcher::new(&root).offline(args.offline);
    for name in names {
        let start = Instant::now();
        let route = if fetch {
            match fetcher.fetch(name) {
                Ok(r) => Some(r.route),
                Err(e) => return fail(&e),
            }
        } else {
            None
        };
        match verify(&root, name) {
            Ok(report) => {
                let route = route.map(|r| format!("{r}; ")).unwrap_or_default();
                println!(
                    "{name}: ok, {route}{report} [{:.1} s]",
                    start.elapsed().as_secs_f64()
                );
            }
            Err(e) => return fail(&e),
        }
    }
    ExitCode::SUCCESS
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// Clap's error as one line (its first), exit code 2; help and version as
/// clap prints them, exit code 0.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{first} (see relperf-data --help)");
            ExitCode::from(2)
        }
    }
}
