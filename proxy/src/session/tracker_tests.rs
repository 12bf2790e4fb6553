//! Table-driven tests of the protocol tracker: each case is what the
//! session sent and what the server answered, and the transcript of what
//! reached the client and what the session was told to do.

use bytes::BytesMut;

use super::{Effect, Forward, Tracker};
use crate::{
    protocol::{
        Frame,
        messages::{self, Severity},
    },
    session::{
        expect::{Duplicate, Expect},
        state::SettingChange,
    },
};

enum Step {
    /// A client message of this type went to the server, with the reply
    /// it awaits (`None`: none, as for Flush or CopyData).
    Sent(u8, Option<Expect>),
    /// A simple Query.
    Query(Vec<SettingChange>),
    Sync,
    /// A reply tidepool makes itself, queued behind what is awaited.
    Synthetic(u8),
    /// What the server sent.
    Backend(Frame),
}
use Step::*;

use crate::protocol::messages::message as frame;

fn reply(tag: u8) -> Step {
    Backend(frame(tag, &[]))
}

fn ready(status: u8) -> Step {
    Backend(frame(b'Z', &[status]))
}

fn complete(tag: &str) -> Step {
    let mut b = BytesMut::new();
    messages::command_complete(&mut b, tag);
    Backend(messages::frame_of(&b))
}

fn error(sev: Severity, code: &str, msg: &str) -> Step {
    let mut b = BytesMut::new();
    messages::error_response(&mut b, sev, code, msg, None);
    Backend(messages::frame_of(&b))
}

fn err(code: &str) -> Step {
    error(Severity::Error, code, "failed")
}

fn parse(hidden: bool, server_name: Option<&str>) -> Step {
    Sent(
        b'P',
        Some(Expect::Parse {
            hidden,
            server_name: server_name.map(Into::into),
        }),
    )
}

fn bind(statement: Option<&str>) -> Step {
    Sent(
        b'B',
        Some(Expect::Bind {
            statement: statement.map(Into::into),
        }),
    )
}

fn execute() -> Step {
    Sent(b'E', Some(Expect::Execute))
}

fn set(name: &str) -> SettingChange {
    SettingChange::Set(name.into(), "'x'".into())
}

/// Runs the steps; returns the transcript and the tracker. Transcript
/// entries: a tag passed on (`T`), hidden (`-1`), rewritten (`E~` and the
/// new message), made up by tidepool (`+3`), and effects.
fn run(steps: Vec<Step>) -> (Vec<String>, Tracker) {
    let mut t = Tracker::default();
    let mut out = Vec::new();
    let mut effects = Vec::new();
    let mut synthetic = BytesMut::new();
    for step in steps {
        match step {
            Sent(tag, e) => {
                t.client(tag);
                if let Some(e) = e {
                    t.expect(e, &mut synthetic);
                }
            }
            Query(settings) => {
                t.client(b'Q');
                t.simple_sent(settings);
            }
            Sync => {
                t.client(b'S');
                t.sync_sent();
            }
            Synthetic(tag) => t.expect(Expect::Synthetic(tag), &mut synthetic),
            Backend(f) => {
                let tag = f.tag as char;
                match t.backend(&f, &mut effects) {
                    Forward::As => out.push(format!("{tag}")),
                    Forward::Hide => out.push(format!("-{tag}")),
                    Forward::Replace(b) => {
                        let e = messages::read_error(&messages::frame_of(&b));
                        out.push(format!("{tag}~{}", e.message));
                    }
                }
                for e in effects.drain(..) {
                    out.push(match e {
                        Effect::PreparedGone(n) => format!("gone {n}"),
                        Effect::PlanStale(n) => format!("stale {n}"),
                        Effect::StillPrepared(n) => format!("still {n}"),
                        Effect::AllStatementsGone => "all gone".into(),
                        Effect::Confirm(SettingChange::Set(k, _)) => format!("confirm {k}"),
                        Effect::Confirm(c) => format!("confirm {c:?}"),
                        Effect::ServerShutdown(m) => format!("shutdown {m}"),
                        Effect::Ready(s) => format!("ready {}", s as char),
                    });
                }
                t.flush_synthetics(&mut synthetic);
            }
        }
        while !synthetic.is_empty() {
            out.push(format!("+{}", synthetic[0] as char));
            let _ = synthetic.split_to(5);
        }
    }
    (out, t)
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    transcript: &'static [&'static str],
    /// Replies still awaited at the end.
    awaited: usize,
    /// The next message may start a new unit of work.
    at_boundary: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a pipeline whose first batch fails skips to its Sync; the next batch runs",
            steps: vec![
                parse(false, None),
                bind(None),
                execute(),
                Sync,
                parse(false, None),
                bind(None),
                execute(),
                Sync,
                reply(b'1'),
                err("22012"),
                ready(b'I'),
                reply(b'1'),
                reply(b'2'),
                complete("SELECT 1"),
                ready(b'I'),
            ],
            transcript: &["1", "E", "Z", "ready I", "1", "2", "C", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "an injected Parse is answered out of the client's sight",
            steps: vec![
                parse(true, Some("tp_a")),
                bind(Some("tp_a")),
                execute(),
                Sync,
                reply(b'1'),
                reply(b'2'),
                Backend(frame(b'D', &[0, 0])),
                complete("SELECT 1"),
                ready(b'I'),
            ],
            transcript: &["-1", "2", "D", "C", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a failed Parse leaves its statement unprepared on the connection",
            steps: vec![
                parse(false, Some("tp_a")),
                bind(Some("tp_a")),
                execute(),
                Sync,
                err("42601"),
                ready(b'I'),
            ],
            transcript: &["E", "gone tp_a", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a skipped hidden Parse behind an error is not prepared either",
            steps: vec![
                bind(None),
                execute(),
                parse(true, Some("tp_b")),
                bind(Some("tp_b")),
                Sync,
                err("22012"),
                ready(b'I'),
            ],
            transcript: &["E", "gone tp_b", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a second Parse of an open name is refused in the client's words",
            steps: vec![
                Sent(
                    b'P',
                    Some(Expect::Duplicate(Box::new(Duplicate {
                        server_name: "tp_a".into(),
                        client_name: "s1".into(),
                    }))),
                ),
                bind(Some("tp_a")),
                Sync,
                error(
                    Severity::Error,
                    "42P05",
                    "prepared statement \"tp_a\" already exists",
                ),
                ready(b'I'),
            ],
            transcript: &["E~prepared statement \"s1\" already exists", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a Close answered by tidepool waits for the replies before it",
            steps: vec![
                bind(Some("tp_a")),
                execute(),
                Synthetic(b'3'),
                Sync,
                reply(b'2'),
                complete("SELECT 1"),
                ready(b'I'),
            ],
            transcript: &["2", "C", "+3", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a Close answered by tidepool with nothing awaited is answered at once",
            steps: vec![Synthetic(b'3'), Sync, ready(b'I')],
            transcript: &["+3", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "Flush: an error before the client's Sync skips what follows until it",
            steps: vec![
                parse(false, None),
                Sent(b'H', None),
                err("42601"),
                bind(None),
                execute(),
                Synthetic(b'3'),
            ],
            transcript: &["E"],
            awaited: 0,
            at_boundary: false,
        },
        Case {
            name: "Flush: replies before Sync leave the batch open",
            steps: vec![
                parse(false, None),
                bind(None),
                Sent(b'D', Some(Expect::Describe { statement: None })),
                execute(),
                Sent(b'H', None),
                reply(b'1'),
                reply(b'2'),
                Backend(frame(b'T', &[0, 0])),
                complete("SELECT 0"),
            ],
            transcript: &["1", "2", "T", "C"],
            awaited: 0,
            at_boundary: false,
        },
        Case {
            name: "the Sync after a skipped batch is awaited and ends it",
            steps: vec![
                parse(false, None),
                Sent(b'H', None),
                err("42601"),
                Sync,
                ready(b'I'),
            ],
            transcript: &["E", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "COPY FROM STDIN: Syncs sent before CopyInResponse are not answered",
            steps: vec![
                parse(false, None),
                bind(None),
                execute(),
                Sync,
                reply(b'1'),
                reply(b'2'),
                Backend(frame(b'G', &[0, 0, 0])),
                Sent(b'd', None),
                Sent(b'c', None),
                Sync,
                complete("COPY 1"),
                ready(b'I'),
            ],
            transcript: &["1", "2", "G", "C", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "COPY FROM STDIN failed by the client ends in an error and its Sync",
            steps: vec![
                bind(None),
                execute(),
                Sync,
                reply(b'2'),
                Backend(frame(b'G', &[0, 0, 0])),
                Sent(b'f', None),
                Sync,
                err("57014"),
                ready(b'I'),
            ],
            transcript: &["2", "G", "E", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a simple query confirms its settings one CommandComplete at a time",
            steps: vec![
                Query(vec![set("timezone"), set("datestyle")]),
                complete("SET"),
                complete("SELECT 1"),
                complete("SET"),
                ready(b'I'),
            ],
            transcript: &[
                "C",
                "confirm timezone",
                "C",
                "C",
                "confirm datestyle",
                "Z",
                "ready I",
            ],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "an error in a simple query is the query's, not a batch's",
            steps: vec![Query(vec![set("timezone")]), err("22023"), ready(b'I')],
            transcript: &["E", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a cancelled query ends with its error and ReadyForQuery",
            steps: vec![
                Query(vec![]),
                Backend(frame(b'T', &[0, 0])),
                Backend(frame(b'D', &[0, 0])),
                err("57014"),
                ready(b'I'),
            ],
            transcript: &["T", "D", "E", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a transaction left open keeps the unit going",
            steps: vec![Query(vec![]), complete("BEGIN"), ready(b'T')],
            transcript: &["C", "Z", "ready T"],
            awaited: 0,
            at_boundary: false,
        },
        Case {
            name: "DEALLOCATE ALL and DISCARD ALL forget every prepared statement",
            steps: vec![
                Query(vec![]),
                complete("DEALLOCATE ALL"),
                ready(b'I'),
                bind(None),
                execute(),
                Sync,
                reply(b'2'),
                complete("DISCARD ALL"),
                ready(b'I'),
            ],
            transcript: &[
                "C", "all gone", "Z", "ready I", "2", "C", "all gone", "Z", "ready I",
            ],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a plan the server refuses marks the statement to be prepared again",
            steps: vec![
                bind(Some("tp_a")),
                execute(),
                Sync,
                err("0A000"),
                ready(b'I'),
            ],
            transcript: &["E", "stale tp_a", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a Close tidepool sent that the server skipped leaves the statement there",
            steps: vec![
                bind(None),
                Sent(
                    b'C',
                    Some(Expect::Close {
                        stale: Some("tp_a".into()),
                    }),
                ),
                parse(true, Some("tp_a")),
                Sync,
                err("08P01"),
                ready(b'I'),
            ],
            transcript: &["E", "still tp_a", "gone tp_a", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a Close tidepool sent is answered out of the client's sight",
            steps: vec![
                Sent(
                    b'C',
                    Some(Expect::Close {
                        stale: Some("tp_a".into()),
                    }),
                ),
                Sent(b'C', Some(Expect::Close { stale: None })),
                Sync,
                reply(b'3'),
                reply(b'3'),
                ready(b'I'),
            ],
            transcript: &["-3", "3", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "a portal run in pieces: PortalSuspended answers each Execute",
            steps: vec![
                bind(None),
                execute(),
                execute(),
                Sync,
                reply(b'2'),
                Backend(frame(b'D', &[0, 0])),
                reply(b's'),
                Backend(frame(b'D', &[0, 0])),
                complete("SELECT 2"),
                ready(b'I'),
            ],
            transcript: &["2", "D", "s", "D", "C", "Z", "ready I"],
            awaited: 0,
            at_boundary: true,
        },
        Case {
            name: "replies still awaited: the unit is in flight",
            steps: vec![
                parse(false, None),
                bind(None),
                execute(),
                Sync,
                reply(b'1'),
                reply(b'2'),
            ],
            transcript: &["1", "2"],
            awaited: 2,
            at_boundary: false,
        },
        Case {
            name: "the server shutting down says so once, and the tracker knows",
            steps: vec![
                Query(vec![]),
                error(Severity::Fatal, "57P01", "terminating connection"),
            ],
            transcript: &["E", "shutdown terminating connection"],
            awaited: 1,
            at_boundary: false,
        },
    ]
}

#[test]
fn hard_sequences() {
    for case in cases() {
        let (transcript, t) = run(case.steps);
        assert_eq!(transcript, case.transcript, "{}", case.name);
        assert_eq!(t.awaited(), case.awaited, "{}: replies awaited", case.name);
        assert_eq!(
            t.at_boundary(),
            case.at_boundary,
            "{}: at boundary",
            case.name
        );
    }
}

#[test]
fn a_fatal_error_is_remembered_so_tidepool_does_not_add_its_own() {
    let (_, t) = run(vec![
        Query(vec![]),
        error(Severity::Fatal, "57P01", "terminating connection"),
    ]);
    assert!(t.backend_fatal());
    let (_, t) = run(vec![Query(vec![]), err("22012"), ready(b'I')]);
    assert!(!t.backend_fatal());
}

#[test]
fn a_batch_failed_before_any_server_ignores_the_rest_until_sync() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.client(b'P');
    t.fail_batch();
    t.client(b'B');
    t.expect(Expect::Bind { statement: None }, &mut out);
    t.expect(Expect::Synthetic(b'3'), &mut out);
    assert_eq!(
        (t.awaited(), out.len()),
        (0, 0),
        "nothing awaited while skipping"
    );
    assert!(!t.at_boundary());
    t.client(b'S');
    t.sync_answered();
    assert!(t.at_boundary());
}

#[test]
fn an_open_batch_is_not_idle_until_its_sync() {
    let mut t = Tracker::default();
    t.client(b'P');
    assert!(!t.is_idle(), "a Parse opens a batch");
    t.client(b'S');
    assert!(t.is_idle());
    t.client(b'Q');
    t.simple_sent(vec![]);
    assert!(!t.is_idle());
    assert!(t.unit_in_flight(), "a simple query outside a transaction");
}
