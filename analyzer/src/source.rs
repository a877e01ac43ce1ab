//! Feeding a trace's records to the replay, decoding on every core.
//!
//! Chunks decode independently, so a producer thread reads a batch of chunks, decodes
//! them in parallel with rayon, and hands the batch over a rendezvous channel while the
//! caller replays the previous batch in file order. At most two batches of decoded
//! records exist at once (the one being replayed, the one being decoded or waiting), and
//! a batch is capped by its uncompressed size as well as by the number of cores: decoded
//! records take about ten times their encoded size, and the sequential replay could not
//! use more decoding cores anyway. Memory is therefore bounded whatever the trace's
//! length and the machine's size.

use std::io::Read;
use std::sync::mpsc;

use heaptape_format::{decode_parallel, ReadError, Record, TraceReader, Truncation};

/// How a stream of records ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamEnd {
    /// Where the reader found the file cut off, if it did.
    pub truncation: Option<Truncation>,
    /// Byte offset just past the last complete chunk.
    pub offset: u64,
}

/// Most chunks decoded per batch: one per core, within reason.
fn batch_len() -> usize {
    rayon::current_num_threads().clamp(2, 16)
}

/// A batch is closed once its chunks hold this many uncompressed bytes.
const BATCH_BYTES: u64 = 4 << 20;

/// Reads every chunk of `reader` and passes each chunk's records, in file order, to
/// `sink`. A damaged chunk stops the stream with its error (after the records of the
/// batches before it were passed on).
pub(crate) fn stream<R, F>(reader: TraceReader<R>, mut sink: F) -> Result<StreamEnd, ReadError>
where
    R: Read + Send,
    F: FnMut(Vec<Record>),
{
    let batch = batch_len();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<Vec<Record>>, ReadError>>(0);
        let producer = scope.spawn(move || {
            let mut reader = reader;
            loop {
                let mut raws = Vec::with_capacity(batch);
                let mut failed = None;
                let mut bytes = 0u64;
                let mut done = false;
                while raws.len() < batch && bytes < BATCH_BYTES {
                    match reader.next_chunk() {
                        Ok(Some(raw)) => {
                            bytes += u64::from(raw.info.uncompressed_len);
                            raws.push(raw);
                        }
                        Ok(None) => {
                            done = true;
                            break;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if !raws.is_empty() {
                    let decoded = decode_parallel(&raws);
                    let stop = decoded.is_err();
                    if tx.send(decoded).is_err() || stop {
                        break;
                    }
                }
                if let Some(e) = failed {
                    let _ = tx.send(Err(e));
                    break;
                }
                if done {
                    break;
                }
            }
            StreamEnd {
                truncation: reader.truncation().cloned(),
                offset: reader.offset(),
            }
        });
        let mut error = None;
        for msg in rx {
            match msg {
                Ok(chunks) => chunks.into_iter().for_each(&mut sink),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let end = match producer.join() {
            Ok(end) => end,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match error {
            Some(e) => Err(e),
            None => Ok(end),
        }
    })
}
