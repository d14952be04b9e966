//! Model-based property test: random sequences of append, flush, read, roll, retention,
//! truncation and reopen, checked against a plain in-memory model of the log.

mod common;

use common::*;
use flumen::storage::LogConfig;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, value_bytes: usize },
    Flush,
    Read { pick: usize },
    Roll,
    Retention,
    Truncate { pick: usize },
    CleanReopen,
    CrashAfterFlush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..6usize, 16..2000usize)
            .prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        1 => Just(Op::Flush),
        3 => any::<usize>().prop_map(|pick| Op::Read { pick }),
        1 => Just(Op::Roll),
        1 => Just(Op::Retention),
        1 => any::<usize>().prop_map(|pick| Op::Truncate { pick }),
        1 => Just(Op::CleanReopen),
        1 => Just(Op::CrashAfterFlush),
    ]
}

/// The model: the batches in the log, oldest first, with their record tags.
#[derive(Default)]
struct Model {
    batches: Vec<(u64, Vec<(u64, u64)>)>,
    next_offset: u64,
}

impl Model {
    fn drop_before(&mut self, start: u64) {
        self.batches.retain(|(base, _)| *base >= start);
    }

    fn truncate(&mut self, offset: u64) -> u64 {
        let keep = self
            .batches
            .iter()
            .position(|(base, tags)| base + tags.len() as u64 > offset)
            .unwrap_or(self.batches.len());
        if keep < self.batches.len() {
            self.next_offset = self.batches[keep].0;
        }
        self.batches.truncate(keep);
        self.next_offset
    }

    fn is_boundary(&self, offset: u64) -> bool {
        offset == self.next_offset || self.batches.iter().any(|(base, _)| *base == offset)
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        retention_bytes: Some(128 << 10),
        ..small_config()
    }
}

fn check(ops: Vec<Op>) {
    run_on_shard(move || async move {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open_uncached(dir.path(), config()).await;
        let mut model = Model::default();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append {
                    records,
                    value_bytes,
                } => {
                    let tag = step as u64;
                    let info = log
                        .append(batch(tag, records, value_bytes, 0))
                        .await
                        .unwrap();
                    assert_eq!(info.base_offset, model.next_offset, "step {step}");
                    model.batches.push((
                        info.base_offset,
                        (0..records as u64).map(|i| (tag, i)).collect(),
                    ));
                    model.next_offset += records as u64;
                }
                Op::Flush => {
                    assert_eq!(log.flush().await.unwrap(), model.next_offset);
                }
                Op::Read { pick } => {
                    if model.batches.is_empty() {
                        continue;
                    }
                    let (base, tags_expected) = &model.batches[pick % model.batches.len()];
                    let offset = base + (pick / 7 % tags_expected.len()) as u64;
                    let read = log.read(offset, 1).await.unwrap();
                    assert_eq!(read.len(), 1, "step {step}");
                    assert_eq!(read[0].header().base_offset, *base, "step {step}");
                    assert_eq!(&tags(&read[0]), tags_expected, "step {step}");
                }
                Op::Roll => log.roll().await.unwrap(),
                Op::Retention => {
                    let before = log.log_start_offset();
                    let report = log.apply_retention().await.unwrap();
                    let start = log.log_start_offset();
                    assert!(start >= before && model.is_boundary(start), "step {step}");
                    assert_eq!(report.log_start_offset, start);
                    model.drop_before(start);
                }
                Op::Truncate { pick } => {
                    let start = log.log_start_offset();
                    let offset = start + (pick as u64 % (model.next_offset - start + 1));
                    let new_next = log.truncate_to(offset).await.unwrap();
                    assert_eq!(new_next, model.truncate(offset), "step {step}");
                }
                Op::CleanReopen => {
                    log.close().await.unwrap();
                    let (reopened, report) = open_uncached(dir.path(), config()).await;
                    assert_eq!(report.batches_scanned, 0, "step {step}: clean close");
                    log = reopened;
                }
                Op::CrashAfterFlush => {
                    log.flush().await.unwrap();
                    drop(log);
                    let (reopened, report) = open_uncached(dir.path(), config()).await;
                    assert_eq!(report.bytes_cut, 0, "step {step}");
                    log = reopened;
                }
            }
            assert_eq!(log.next_offset(), model.next_offset, "step {step}");
            let start = model
                .batches
                .first()
                .map_or(model.next_offset, |(base, _)| *base);
            assert!(log.log_start_offset() <= start, "step {step}");
        }
        let read: Vec<_> = read_all(&log).await.iter().flat_map(tags).collect();
        let expected: Vec<_> = model
            .batches
            .iter()
            .flat_map(|(_, tags)| tags.clone())
            .collect();
        assert_eq!(read, expected);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..80)) {
        check(ops);
    }
}
