//! `sipcraft`: one executable for every process role. The supervisor (`run`) re-executes
//! this same file for its children (`worker`, `dbagent`), so they always match its version.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod logging;
mod pages;
mod sched;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(windows)]
mod winservice;

/// The configuration file used when none is named.
#[cfg(not(windows))]
const DEFAULT_CONFIG: &str = "/etc/sipcraft/sipcraft.toml";
#[cfg(windows)]
const DEFAULT_CONFIG: &str = r"C:\ProgramData\sipcraft\sipcraft.toml";

#[derive(Parser)]
#[command(
    name = "sipcraft",
    version,
    about = "Enterprise SIP registrar, location service and call router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the supervisor, in the foreground, logging to stderr).
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Control a running server.
    Ctl(cli::CtlArgs),
    /// The supervisor as a Windows service: install, uninstall, and the entry point the
    /// service control manager starts.
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        command: winservice::ServiceCommand,
    },
    /// A SIP worker (started by the supervisor).
    #[command(hide = true)]
    Worker(cli::WorkerArgs),
    /// The database agent (started by the supervisor).
    #[command(hide = true)]
    Dbagent(cli::ChildArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; print every problem with its key and line.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    pages::small_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => cli::run_supervisor(&config),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Ctl(args) => cli::ctl(args),
        #[cfg(windows)]
        Command::Service { command } => winservice::main(command),
        Command::Worker(args) => cli::run_worker(args),
        Command::Dbagent(args) => cli::run_dbagent(args),
    }
}

fn config_check(file: &Path) -> ExitCode {
    let problems = sipcraft_config::check_file(file);
    if problems.is_empty() {
        println!("{}: ok", file.display());
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!("{}: {} problem(s)", file.display(), problems.len());
    ExitCode::FAILURE
}
