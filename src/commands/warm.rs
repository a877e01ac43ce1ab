//! Loading the modules' symbols while the program runs, for `record` to embed at the
//! end ([`SymbolWarmer`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use heaptape_analyzer::{ElfSymbolizer, SymbolizerOptions};
use heaptape_recorder::ModuleHook;

/// A thread that loads the symbols and debug info of every module the recorder
/// announces, at the lowest priority, into the symbolizer that embeds them when the
/// recording ends. Inflating the C library's compressed DWARF alone takes 20 ms or
/// more: done while the program runs, on a core it leaves idle, it no longer adds to
/// the end of a recording. On a machine whose cores the program and the recorder keep
/// busy, the thread gets little time and the loads finish at the end, as before.
pub struct SymbolWarmer {
    symbolizer: Arc<ElfSymbolizer>,
    hook: ModuleHook,
    stop: Arc<AtomicBool>,
}

impl SymbolWarmer {
    /// Starts the thread.
    pub fn start() -> SymbolWarmer {
        let symbolizer = Arc::new(ElfSymbolizer::new(SymbolizerOptions::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(String, Vec<u8>)>();
        let (sym, halt) = (symbolizer.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("heaptape-symbols".into())
            .spawn(move || {
                // Best effort: at the default priority it would only compete more.
                let _ = heaptape_recorder::low_level::idle_thread_priority();
                let mut seen = HashSet::new();
                while !halt.load(Ordering::Relaxed) {
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(key) => {
                            if seen.insert(key.clone()) && !halt.load(Ordering::Relaxed) {
                                sym.load_now(&key.0, &key.1);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            });
        let running = spawned.is_ok();
        let hook = ModuleHook(Arc::new(move |m: &heaptape_format::ModuleLoad| {
            if running && !m.path.starts_with('[') {
                let _ = tx.send((m.path.clone(), m.build_id.clone()));
            }
        }));
        SymbolWarmer {
            symbolizer,
            hook,
            stop,
        }
    }

    /// The recorder's hook: announces each module to the thread.
    pub fn hook(&self) -> ModuleHook {
        self.hook.clone()
    }

    /// Stops the thread (a load in progress finishes; the modules it did not reach are
    /// loaded when the symbols are embedded, if they are needed) and returns the
    /// symbolizer.
    pub fn finish(self) -> Arc<ElfSymbolizer> {
        self.stop.store(true, Ordering::Relaxed);
        self.symbolizer
    }
}
