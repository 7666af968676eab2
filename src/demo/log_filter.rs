//! The demo's own tracing filter. The controller runs in this process, under the subscriber
//! the command line set up for every subcommand (info by default); its info lines (such as
//! "controller is the leader") would land in the middle of the progress table. Under this
//! filter only its warnings and errors reach that subscriber, in its format and through its
//! own filter.

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Dispatch, Event, Level, Metadata};

/// The current subscriber, passed only warnings and errors.
pub(super) fn warnings_only() -> Dispatch {
    let inner = tracing::dispatcher::get_default(Dispatch::clone);
    Dispatch::new(WarningsOnly { inner })
}

struct WarningsOnly {
    inner: Dispatch,
}

fn passes(metadata: &Metadata<'_>) -> bool {
    // More verbose levels compare greater.
    *metadata.level() <= Level::WARN
}

// `current_span` keeps its default (unknown): its type is only nameable through tracing-core,
// and nothing the controller runs asks for it (span parents come from the wrapped subscriber).
impl Subscriber for WarningsOnly {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if passes(metadata) {
            self.inner.register_callsite(metadata)
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        passes(metadata) && self.inner.enabled(metadata)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        self.inner.event(event);
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the wrapped subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_warnings_and_errors_reach_the_subscriber() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before the filter");
            let filtered = warnings_only();
            tracing::dispatcher::with_default(&filtered, || {
                tracing::info!("controller is the leader");
                tracing::warn!("a warning");
                tracing::error!("an error");
            });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("before the filter"), "{text}");
        assert!(!text.contains("controller is the leader"), "{text}");
        assert!(text.contains("a warning"), "{text}");
        assert!(text.contains("an error"), "{text}");
    }
}
