//! The tool's error: what went wrong, printed with `{:#}`, and the exit code that says so.

use std::fmt;

use persistence_stores::{Error, ErrorKind};

/// Exit code of arguments that do not parse or make sense (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a configuration that is invalid or missing.
pub const EXIT_CONFIG: u8 = 3;
/// Exit code of a server that cannot be reached or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit code of a `copy` or `cleanup` that stopped part-way (run it again to go on).
pub const EXIT_PARTIAL: u8 = 5;
/// Exit code of `schema check` when the schema is missing something or differs.
pub const EXIT_SCHEMA_DIFFERS: u8 = 6;
/// Exit code of anything else.
pub const EXIT_OTHER: u8 = 1;

/// What went wrong.
#[derive(Debug)]
pub enum CliError {
    /// An error of the store (or of opening it), with its kind and context.
    Api(Error),
    /// Bad arguments found after parsing (an offset or id that does not parse).
    Usage(String),
    /// A long command stopped part-way: what was done, and why it stopped.
    Partial {
        /// What was done before it stopped.
        done: String,
        /// Why it stopped.
        cause: Box<CliError>,
    },
    /// Anything else (a file that cannot be read, a copy that does not verify).
    Other(String),
    /// The reader of our output went away (`| head`): stop quietly.
    BrokenPipe,
    /// `schema check` found this many differences (the report is printed already).
    SchemaDiffers(usize),
}

impl CliError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api(e) => match e.kind() {
                ErrorKind::ConfigInvalid => EXIT_CONFIG,
                ErrorKind::Unavailable | ErrorKind::Timeout => EXIT_UNREACHABLE,
                _ => EXIT_OTHER,
            },
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Partial { .. } => EXIT_PARTIAL,
            CliError::Other(_) => EXIT_OTHER,
            CliError::BrokenPipe => 0,
            CliError::SchemaDiffers(_) => EXIT_SCHEMA_DIFFERS,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Api(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Other(format!("cannot write the output: {e}"))
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api(e) => {
                if f.alternate() {
                    write!(f, "{e:#}")?;
                } else {
                    write!(f, "{e}")?;
                }
                match e.kind() {
                    ErrorKind::ConfigInvalid => write!(
                        f,
                        "\n(check --config FILE, PERSISTENCE_CONFIG and the PERSISTENCE_<BACKEND>_<KEY> variables)"
                    ),
                    ErrorKind::Unavailable | ErrorKind::Timeout => write!(
                        f,
                        "\n(is the server running and its address in the configuration right? the command can be run again)"
                    ),
                    _ => Ok(()),
                }
            }
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
            CliError::Partial { done, cause } => {
                if f.alternate() {
                    write!(f, "stopped part-way ({done}): {cause:#}")?;
                } else {
                    write!(f, "stopped part-way ({done}): {cause}")?;
                }
                write!(
                    f,
                    "\n(run the same command again to go on from where it stopped)"
                )
            }
            CliError::BrokenPipe => f.write_str("output closed"),
            CliError::SchemaDiffers(n) => write!(
                f,
                "the schema differs from what the backend creates ({n} difference(s), listed above)"
            ),
        }
    }
}
