//! Feeding a trace's records to the replay, decoding on every core.
//!
//! Chunks decode independently, so a producer thread reads a batch of chunks, decodes
//! them in parallel with rayon, and queues the batch while the caller replays the
//! previous one in file order. At most three batches of decoded records exist at once
//! (the one being replayed, one queued, the one being decoded), and a batch is capped
//! by its uncompressed size as well as by the number of cores: decoded records take
//! about ten times their encoded size, and the sequential replay could not use more
//! decoding cores anyway. The record vectors go back to the producer once replayed and
//! are decoded into again, so the steady state allocates nothing (fresh vectors of a
//! few megabytes per chunk cost their page faults, the kernel zeroing every page: 14%
//! of a profile). Memory is therefore bounded whatever the trace's length and the
//! machine's size.

use std::io::Read;
use std::sync::mpsc;

use heaptape_format::{ReadError, TraceReader, Truncation};
use rayon::prelude::*;

use super::handoff;
use super::prepare::Prepared;
use crate::progress::Progress;

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

/// Decoded batches that may wait for the replay: one, so that the decoder starts on
/// the next batch as soon as it handed one over instead of waiting for the replay to
/// take it.
const QUEUED_BATCHES: usize = 1;

/// Reads every chunk of `reader`, decodes and prepares it for a replay with `shards`
/// address shards (see [`super::prepare`]), and passes the chunks, in file order, to
/// `sink`. The sink puts the chunks it is done with in the vector it is given; they go
/// back to the decoder, so that decoding does not allocate (and fault in) fresh memory
/// for every chunk. A damaged chunk stops the stream with its error (after the records
/// of the batches before it were passed on). `progress`, if any, is told how far into
/// the file the reader is.
pub(crate) fn stream<R, F>(
    reader: TraceReader<R>,
    progress: Option<&Progress>,
    shards: usize,
    mut sink: F,
) -> Result<StreamEnd, ReadError>
where
    R: Read + Send,
    F: FnMut(Prepared, &mut Vec<Prepared>),
{
    let batch = batch_len();
    std::thread::scope(|scope| {
        type Batch = Result<Vec<Prepared>, ReadError>;
        let (tx, rx) = mpsc::sync_channel::<Batch>(QUEUED_BATCHES);
        // Emptied chunks, back from the replay. At most (batches in flight) x (chunks
        // per batch) of them exist, plus the few the replay's runs hold.
        let (recycle_tx, recycle_rx) = mpsc::channel::<Prepared>();
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
                if let Some(p) = progress {
                    p.set(reader.offset());
                }
                if !raws.is_empty() {
                    let mut bufs: Vec<Prepared> = raws
                        .iter()
                        .map(|_| recycle_rx.try_recv().unwrap_or_default())
                        .collect();
                    let decoded = raws
                        .par_iter()
                        .zip(bufs.par_iter_mut())
                        .map(|(raw, buf)| {
                            buf.clear_records();
                            raw.decode_into(&mut buf.records)?;
                            buf.prepare(shards);
                            Ok(())
                        })
                        .collect::<Result<(), ReadError>>()
                        .map(|()| bufs);
                    for raw in raws {
                        reader.recycle(raw);
                    }
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
        let mut spent = Vec::new();
        while let Ok(msg) = handoff::recv(&rx) {
            match msg {
                Ok(chunks) => {
                    for chunk in chunks {
                        sink(chunk, &mut spent);
                        for chunk in spent.drain(..) {
                            // The producer may be gone (it stops at an error): then the
                            // chunk is simply dropped.
                            let _ = recycle_tx.send(chunk);
                        }
                    }
                }
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
