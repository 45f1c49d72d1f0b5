#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod bench;
mod cleanup;
mod copy;
mod error;
mod inspect;
mod output;
mod rebuild;
mod schema;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use persistence_stores::{Config, Stores};

use crate::error::CliError;

/// The operators' tool: look inside an event store, repair it, copy it, measure it.
#[derive(Parser, Debug)]
#[command(name = "persistence", version, about, long_about = None)]
struct Cli {
    /// The configuration file (TOML, as the facade reads it); without it,
    /// `PERSISTENCE_CONFIG` and the `PERSISTENCE_<BACKEND>_<KEY>` variables.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Overrides the configuration's `backend` (memory, sqlite, postgres, dynamodb, cassandra).
    #[arg(long, global = true, value_name = "NAME")]
    backend: Option<String>,
    /// One JSON object per line instead of text, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The persistence ids, streamed.
    Ids {
        /// Print only how many there are.
        #[arg(long)]
        count: bool,
    },
    /// The events of one id with their metadata.
    Events {
        /// The persistence id.
        id: String,
        /// The first sequence number (inclusive).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// The last sequence number (inclusive).
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        /// Show payloads that are not CBOR as hex instead of base64.
        #[arg(long)]
        hex: bool,
    },
    /// The latest snapshot of one id.
    Snapshot {
        /// The persistence id.
        id: String,
        /// Show a payload that is not CBOR as hex instead of base64.
        #[arg(long)]
        hex: bool,
    },
    /// The stored events carrying a tag, after an offset.
    Tag {
        /// The tag (exact match).
        tag: String,
        /// Start after this offset: `none`, `sequence:<n>`, `timeuuid:<uuid>`, `token:<text>`.
        #[arg(long, default_value = "none")]
        offset: String,
        /// Show payloads that are not CBOR as hex instead of base64.
        #[arg(long)]
        hex: bool,
    },
    /// A live stream of a tag's or an id's events, printed as they arrive, until Ctrl-C.
    #[command(group(ArgGroup::new("source").required(true).args(["tag", "id"])))]
    Tail {
        /// Follow the events carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Follow the events of this persistence id.
        #[arg(long)]
        id: Option<String>,
        /// Start after this offset (for `--id`, `sequence:<n>` starts after event n).
        #[arg(long, default_value = "none")]
        offset: String,
        /// Show payloads that are not CBOR as hex instead of base64.
        #[arg(long)]
        hex: bool,
    },
    /// Deletes the events of one id up to a sequence number (dry run unless `--execute`).
    Delete {
        /// The persistence id.
        id: String,
        /// The last sequence number to delete (inclusive).
        #[arg(long)]
        to: u64,
        /// Delete; without it, only print what would go.
        #[arg(long)]
        execute: bool,
    },
    /// Deletes events and/or snapshots of many ids (dry run unless `--execute`).
    Cleanup(cleanup::CleanupArgs),
    /// Writes the tag index and the id registry again from the events (idempotent).
    Rebuild(rebuild::RebuildArgs),
    /// Copies events and snapshots (and durable states by tag) from one backend to another.
    Copy(copy::CopyArgs),
    /// Measures the standard workloads against the configured backend.
    Bench(bench::BenchArgs),
    /// Projection offsets (`stores.offsets`).
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
    /// Durable state.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// The backend's schema: print it, create it, or check what exists against it.
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
}

#[derive(Subcommand, Debug)]
enum SchemaAction {
    /// The DDL (SQL), CQL or `aws dynamodb create-table` text to apply by hand.
    Print,
    /// Creates what is missing (idempotent).
    Create,
    /// Compares what exists with what `create` makes; exit code 6 when it differs.
    Check,
}

#[derive(Subcommand, Debug)]
enum OffsetsAction {
    /// The stored offset of one projection and key.
    Show(ProjectionArgs),
    /// Stores an offset whatever is stored (a running instance's next commit then fails).
    Set {
        #[command(flatten)]
        projection: ProjectionArgs,
        /// The offset: `none`, `sequence:<n>`, `timeuuid:<uuid>`, `token:<text>`.
        offset: String,
    },
    /// Forgets the offset: the projection starts from the beginning of its source.
    Clear(ProjectionArgs),
}

#[derive(Args, Debug)]
struct ProjectionArgs {
    /// The projection's name.
    name: String,
    /// The projection's key (the part of the stream it reads, e.g. a tag).
    key: String,
}

#[derive(Subcommand, Debug)]
enum StateAction {
    /// The stored state of one id.
    Get {
        /// The persistence id.
        id: String,
        /// Show a payload that is not CBOR as hex instead of base64.
        #[arg(long)]
        hex: bool,
    },
}

/// How the commands print: text or JSON lines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Out {
    pub json: bool,
}

fn main() -> ExitCode {
    // `parse` prints clap's message and exits with code 2 on bad arguments.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Reads the configuration as the facade does, with the command line's overrides.
pub(crate) fn load_config(
    file: Option<&std::path::Path>,
    backend: Option<&str>,
) -> Result<Config, CliError> {
    let mut config = match file {
        Some(path) => {
            let mut c = Config::from_file(path)?;
            c.merge_env(std::env::vars())?;
            c
        }
        None => Config::load()?,
    };
    if let Some(name) = backend {
        config.merge_env([("PERSISTENCE_BACKEND".to_string(), name.to_string())])?;
    }
    Ok(config)
}

async fn open(file: Option<&std::path::Path>, backend: Option<&str>) -> Result<Stores, CliError> {
    open_config(&load_config(file, backend)?).await
}

/// Opens the stores `config` names; an error names the backend.
async fn open_config(config: &Config) -> Result<Stores, CliError> {
    let name = config.backend().to_string();
    persistence_stores::open(config).await.map_err(|e| {
        // An error of `open` may not name the backend yet; the operator needs it.
        if e.backend().is_some() {
            CliError::Api(e)
        } else {
            let full = format!("{e:#}");
            let prefix = format!("{}: ", e.kind());
            let text = full.strip_prefix(&prefix).unwrap_or(&full);
            CliError::Api(
                persistence_stores::Error::new(e.kind(), format!("opening backend {name}: {text}"))
                    .with_retryable(e.is_retryable()),
            )
        }
    })
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let out = Out { json: cli.json };
    let (file, backend) = (cli.config.as_deref(), cli.backend.as_deref());
    match cli.command {
        Command::Copy(args) => copy::run(&args, backend, out).await,
        Command::Schema { action } => {
            let config = load_config(file, backend)?;
            match action {
                SchemaAction::Print => schema::print(&config, out).await,
                SchemaAction::Create => schema::create(&config, out).await,
                SchemaAction::Check => schema::check(&config, out).await,
            }
        }
        Command::Ids { count } => inspect::ids(&open(file, backend).await?, count, out).await,
        Command::Events { id, from, to, hex } => {
            inspect::events(&open(file, backend).await?, &id, from, to, hex, out).await
        }
        Command::Snapshot { id, hex } => {
            inspect::snapshot(&open(file, backend).await?, &id, hex, out).await
        }
        Command::Tag { tag, offset, hex } => {
            inspect::tag(&open(file, backend).await?, tag, &offset, hex, out).await
        }
        Command::Tail {
            tag,
            id,
            offset,
            hex,
        } => inspect::tail(&open(file, backend).await?, tag, id, &offset, hex, out).await,
        Command::Delete { id, to, execute } => {
            cleanup::delete(&open(file, backend).await?, &id, to, execute, out).await
        }
        Command::Cleanup(args) => cleanup::cleanup(&open(file, backend).await?, &args, out).await,
        Command::Rebuild(args) => rebuild::run(&open(file, backend).await?, &args, out).await,
        Command::Bench(args) => bench::run(&open(file, backend).await?, &args, out).await,
        Command::Offsets { action } => {
            let stores = open(file, backend).await?;
            match action {
                OffsetsAction::Show(p) => {
                    inspect::offsets_show(&stores, &p.name, &p.key, out).await
                }
                OffsetsAction::Set { projection, offset } => {
                    inspect::offsets_set(&stores, &projection.name, &projection.key, &offset, out)
                        .await
                }
                OffsetsAction::Clear(p) => {
                    inspect::offsets_clear(&stores, &p.name, &p.key, out).await
                }
            }
        }
        Command::State { action } => match action {
            StateAction::Get { id, hex } => {
                inspect::state_get(&open(file, backend).await?, &id, hex, out).await
            }
        },
    }
}
