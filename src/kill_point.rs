//! Kill points: the steps of an upgrade where a test can have the agent killed with SIGKILL
//! (as `kill -9` or a power cut would) to check what a restarted agent makes of what was left.
//! `STATICPOD_PULLER_KILL_AT=<point>` names the point. Only builds with the dev cluster read
//! it: a packaged agent has no way to be told to kill itself.

/// A step of an upgrade, in the order an upgrade holding a grant reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPoint {
    /// The grant is in hand; nothing is on disk yet.
    Granted,
    /// The previous revision is saved and the journal entry written; the manifest is not.
    Journaled,
    /// The new manifest's temp file is written and synced, not yet renamed into place.
    MidWrite,
    /// The new manifest is in place; its pod is not seen Ready yet.
    Written,
    /// The pod is seen Ready on the new hash; nothing is recorded yet.
    Ready,
    /// The outcome is on the grant (the same patch releases it); the journal is still open.
    OutcomeRecorded,
    /// The journal is closed too; only the upgrade's Event is left.
    JournalClosed,
}

impl KillPoint {
    pub const ALL: [KillPoint; 7] = [
        KillPoint::Granted,
        KillPoint::Journaled,
        KillPoint::MidWrite,
        KillPoint::Written,
        KillPoint::Ready,
        KillPoint::OutcomeRecorded,
        KillPoint::JournalClosed,
    ];

    /// The environment variable naming the point to be killed at.
    pub const ENV: &'static str = "STATICPOD_PULLER_KILL_AT";

    pub fn name(self) -> &'static str {
        match self {
            KillPoint::Granted => "granted",
            KillPoint::Journaled => "journaled",
            KillPoint::MidWrite => "mid-write",
            KillPoint::Written => "written",
            KillPoint::Ready => "ready",
            KillPoint::OutcomeRecorded => "outcome-recorded",
            KillPoint::JournalClosed => "journal-closed",
        }
    }

    pub fn parse(name: &str) -> Option<KillPoint> {
        KillPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The upgrade reached `point`: die here if told to.
pub fn reached(point: KillPoint) {
    #[cfg(feature = "dev-cluster")]
    if armed() == Some(point) {
        tracing::warn!(point = point.name(), "kill point reached: SIGKILL");
        // SAFETY: kill(2) on our own pid with a constant signal; it has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(feature = "dev-cluster"))]
    let _ = point;
}

#[cfg(feature = "dev-cluster")]
fn armed() -> Option<KillPoint> {
    static ARMED: std::sync::OnceLock<Option<KillPoint>> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| {
        let name = std::env::var(KillPoint::ENV).ok()?;
        let point = KillPoint::parse(&name);
        if point.is_none() {
            tracing::warn!(%name, "{} names no kill point; ignored", KillPoint::ENV);
        }
        point
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_parses_from_its_name() {
        for p in KillPoint::ALL {
            assert_eq!(KillPoint::parse(p.name()), Some(p));
        }
        assert_eq!(KillPoint::parse("released"), None);
    }
}
