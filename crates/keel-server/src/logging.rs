//! Log lines of `keel serve`, on stderr, every one starting with `[NODE N]`:
//!
//! ```text
//! [NODE 1] 2025-01-01T12:00:00.123456Z  INFO became LEADER for term 2
//! [NODE 1] 2025-01-01T12:00:00.200000Z  WARN hyper::proto: ... (targets outside keel are named)
//! ```
//!
//! keel's own messages already start with `[NODE N]` (so they read well under any
//! subscriber, e.g. in tests); the formatter drops that copy instead of printing it twice.
//! `--log-format json` prints one object per line instead:
//! `{"timestamp": "...", "level": "INFO", "node": 1, "target": "keel_node::executor", "message": "...", ...fields}`.

use crate::config::LogFormat;
use keel_core::NodeId;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber for node `id`. `filter` is env-filter syntax.
pub fn init(id: NodeId, format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|error| format!("bad --log-level {filter:?}: {error}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(NodeFormat { id, format })
        .try_init()
        .map_err(|error| format!("cannot install the logger: {error}"))?;
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("[NODE {id}] panic: {info}");
        default_hook(info);
    }));
    Ok(())
}

pub struct NodeFormat {
    pub id: NodeId,
    pub format: LogFormat,
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

impl<S, N> FormatEvent<S, N> for NodeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let prefix = format!("[NODE {}] ", self.id);
        let message = fields.message.strip_prefix(&prefix).unwrap_or(&fields.message);
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let metadata = event.metadata();
        match self.format {
            LogFormat::Text => {
                write!(writer, "{prefix}{timestamp} {:>5} ", metadata.level())?;
                if !metadata.target().starts_with("keel") {
                    write!(writer, "{}: ", metadata.target())?;
                }
                writer.write_str(message)?;
                for (name, value) in &fields.others {
                    write!(writer, " {name}={value}")?;
                }
            }
            LogFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("timestamp".into(), timestamp.into());
                object.insert("level".into(), metadata.level().as_str().into());
                object.insert("node".into(), self.id.0.into());
                object.insert("target".into(), metadata.target().into());
                object.insert("message".into(), message.into());
                for (name, value) in fields.others {
                    object.insert(name.into(), value.into());
                }
                writer.write_str(&serde_json::Value::Object(object).to_string())?;
            }
        }
        writeln!(writer)
    }
}
