//! Modules: the tracee's `/proc/PID/maps` rescanned at exec and at every dynamic-linker
//! notification; new modules parsed (once per file), recorded, registered for unwinding
//! and hooked, vanished ones recorded as unloaded.

use std::sync::Arc;

use heaptape_format::Record;

use super::model::{is_libc_path, KnownModule};
use super::Tracer;
use crate::hooks::elf::ElfModule;
use crate::hooks::patch::{
    install_int3_hook, install_jmp_hook, jmp_patchable, HookKind, TRAMPOLINE_BYTES,
};
use crate::procfs::{
    self,
    maps::{self, MappedModule},
};
use crate::sys::{self, Tid};
use crate::tracee::inject;
use crate::tracee::leftovers::{trampoline_header, TRAMPOLINE_HEADER};

impl Tracer {
    pub(super) fn elf(&mut self, m: &MappedModule, pid: Tid) -> Option<Arc<ElfModule>> {
        let key = (m.path.clone(), m.inode);
        if let Some(e) = self.elf_cache.get(&key) {
            return e.clone();
        }
        let parsed = if m.is_vdso() {
            let r = m.avma_range();
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            match sys::read_memory(pid, r.start, &mut buf) {
                Ok(n) if n == buf.len() => ElfModule::from_bytes("[vdso]", buf).ok(),
                _ => None,
            }
        } else {
            // The path first; the process's own view of the file when the path does not
            // open (another mount namespace, a deleted file).
            let via_proc = procfs::map_file(pid, m.mappings[0].start, m.mappings[0].end);
            ElfModule::from_path(&m.path)
                .or_else(|_| ElfModule::from_path(&via_proc))
                .ok()
        }
        .map(Arc::new);
        self.elf_cache.insert(key, parsed.clone());
        parsed
    }

    /// Brings a space's module list up to date with /proc/PID/maps: new modules are
    /// recorded, registered for unwinding and hooked; vanished ones are recorded as
    /// unloaded.
    pub(super) fn rescan(&mut self, space_id: usize, tid: Tid) {
        let ts = self.now();
        let Some(owner) = self.spaces[space_id].as_ref().map(|s| s.owner) else {
            return;
        };
        let Ok(maps) = maps::read_maps(tid).or_else(|_| maps::read_maps(owner)) else {
            return;
        };
        let pid = self.tasks.get(&tid).map(|t| t.pid).unwrap_or(owner);
        let recording = self.procs.get(&pid).is_some_and(|p| p.recording);
        let groups = maps::group_modules(&maps);
        let exe = procfs::exe_path(pid);
        // Unloaded modules.
        {
            let space = self.spaces[space_id].as_mut().expect("live");
            let mut gone = Vec::new();
            space.modules.retain(|k| {
                let still = groups
                    .iter()
                    .any(|g| g.path == k.path && g.avma_range().start == k.start);
                if !still {
                    gone.push((k.path.clone(), k.bias, k.range.clone()));
                }
                still
            });
            for (path, bias, range) in gone {
                space.unwinder.remove_module(range.start);
                space.hooks.retain(|a, _| !range.contains(a));
                space.traps.retain(|_, entry| !range.contains(entry));
                if recording {
                    self.events.buf().push(Record::ModuleUnload {
                        ts,
                        pid: pid as u32,
                        base: bias,
                        path,
                    });
                }
            }
        }
        for g in &groups {
            if g.path.starts_with("/memfd:heaptape") {
                continue;
            }
            let start = g.avma_range().start;
            let known = self.spaces[space_id]
                .as_ref()
                .expect("live")
                .modules
                .iter()
                .any(|k| k.path == g.path && k.start == start);
            if known {
                continue;
            }
            let Some(elf) = self.elf(g, pid) else {
                continue;
            };
            let bias = if g.is_vdso() {
                elf.load_bias(&g.mappings).unwrap_or(start)
            } else {
                match elf.load_bias(&g.mappings) {
                    Some(b) => b,
                    None => continue,
                }
            };
            let km = KnownModule {
                path: g.path.clone(),
                start,
                range: g.avma_range(),
                bias,
                elf: elf.clone(),
            };
            if recording {
                let rec = module_record(ts, pid, &km);
                self.announce(&rec);
                self.events.buf().push(rec);
            }
            {
                let space = self.spaces[space_id].as_mut().expect("live");
                space.unwinder.add_module(&elf, bias, km.range.clone());
                space.modules.push(km);
            }
            if !g.is_vdso() {
                let replacement = !is_libc_path(&g.path) && Some(g.path.as_str()) != exe.as_deref();
                self.hook_module(space_id, tid, &elf, bias, g, replacement);
            }
        }
        self.refresh_allocators(space_id, exe.as_deref());
    }

    pub(super) fn hook_module(
        &mut self,
        space_id: usize,
        tid: Tid,
        elf: &ElfModule,
        bias: u64,
        module: &MappedModule,
        replacement: bool,
    ) {
        let range = module.avma_range();
        let prefixes: Vec<&str> = self.prefixes.iter().map(|s| s.as_str()).collect();
        let mut sites: Vec<(u64, HookKind, String, u64)> = elf
            .hook_symbols(&prefixes)
            .into_iter()
            .map(|s| {
                (
                    s.vaddr.wrapping_add(bias),
                    HookKind::Alloc(s.spec),
                    s.name,
                    s.size,
                )
            })
            .collect();
        sites.extend(elf.resource_hooks().into_iter().map(|h| {
            (
                h.vaddr.wrapping_add(bias),
                HookKind::Resource(h.call),
                h.name,
                h.size,
            )
        }));
        if let Some(v) = elf.dl_debug_state() {
            sites.push((
                v.wrapping_add(bias),
                HookKind::DlDebugState,
                "_dl_debug_state".into(),
                0,
            ));
        }
        if sites.is_empty() {
            return;
        }
        let space = self.spaces[space_id].as_mut().expect("live");
        sites.retain(|(a, _, _, _)| !space.hooks.contains_key(a));
        let Some(probe) = space.probe.clone() else {
            return;
        };
        let need = sites.len() as u64 * TRAMPOLINE_BYTES;
        // Trampoline memory within reach of the module.
        let page = space
            .tramp_pages
            .iter_mut()
            .find(|(next, end)| end - *next >= need && next.abs_diff(range.start) < (1 << 30));
        let (mut next, end) = match page {
            Some(p) => (p.0, p.1),
            None => {
                // The pages start with a mark a later session recognises them by.
                let header = trampoline_header(probe.borrow().code_addr);
                let len = (TRAMPOLINE_HEADER + need).div_ceil(4096) * 4096;
                let mut held = Vec::new();
                let addr = inject::map_near(tid, &probe.borrow(), range.start, len, &mut held);
                if let Some(t) = self.tasks.get_mut(&tid) {
                    t.held.extend(held);
                }
                let space = self.spaces[space_id].as_mut().expect("live");
                let marked = addr.and_then(|a| {
                    space.mem.write(a, &header)?;
                    Ok(a)
                });
                match marked {
                    Ok(a) => {
                        let first = a + TRAMPOLINE_HEADER;
                        space.tramp_pages.push((first, a + len));
                        (first, a + len)
                    }
                    Err(e) => {
                        self.stats
                            .hook_failures
                            .push(format!("{}: cannot map trampolines: {e}", elf.name()));
                        return;
                    }
                }
            }
        };
        let busy_ips = std::mem::take(&mut self.busy_ips);
        let probe_base = probe.borrow().code_addr;
        let space = self.spaces[space_id].as_mut().expect("live");
        let mut installed = 0;
        for (addr, kind, name, size) in sites {
            let mut code = [0u8; 16];
            if space.mem.read(addr, &mut code).is_err() {
                continue;
            }
            if code[0] == 0xcc {
                continue;
            }
            let patchable = !matches!(kind, HookKind::DlDebugState)
                && space.fast
                && jmp_patchable(&space.mem, addr, size, &busy_ips);
            if patchable {
                if let Some(hook) = install_jmp_hook(
                    &space.mem,
                    addr,
                    &code,
                    next,
                    probe_base,
                    &kind,
                    space.ring.as_ref().map(|r| &r.hook),
                    replacement,
                ) {
                    if let Some(t) = hook.trap {
                        space.traps.insert(t, addr);
                    }
                    space.hooks.insert(addr, hook);
                    next += TRAMPOLINE_BYTES;
                    installed += 1;
                    self.stats.jmp_hooks += 1;
                    continue;
                }
            }
            let hook = match install_int3_hook(&space.mem, addr, &code, next, kind) {
                Ok(Some(hook)) => hook,
                Ok(None) => continue,
                Err(e) => {
                    self.stats
                        .hook_failures
                        .push(format!("{name} in {}: {e}", elf.name()));
                    continue;
                }
            };
            space.hooks.insert(addr, hook);
            next += TRAMPOLINE_BYTES;
            installed += 1;
        }
        self.busy_ips = busy_ips;
        if let Some(p) = space.tramp_pages.iter_mut().find(|p| p.1 == end) {
            p.0 = next;
        }
        self.stats.hooks += installed;
        if installed > 0 {
            self.stats.modules_hooked += 1;
            self.keep_patched_code_out_of_dumps(space_id, tid, module);
        }
    }

    /// The patches made the module's code pages private copies, which a core dump would
    /// then hold (1.4 MiB for libc) where a native one holds none: mark the module's
    /// executable mappings MADV_DONTDUMP, unless the process's coredump_filter asks for
    /// file-backed private mappings (bit 2), whose dump would then hold them natively.
    fn keep_patched_code_out_of_dumps(&mut self, space_id: usize, tid: Tid, module: &MappedModule) {
        if procfs::coredump_filter(tid).is_none_or(|f| f & 0x4 != 0) {
            return;
        }
        let Some(probe) = self.spaces[space_id].as_ref().and_then(|s| s.probe.clone()) else {
            return;
        };
        let mut held = Vec::new();
        for r in module.exec_ranges() {
            let _ = inject::dont_dump(tid, &probe.borrow(), r.start, r.end - r.start, &mut held);
        }
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.held.extend(held);
        }
    }

    pub(super) fn emit_module_loads(&mut self, space_id: usize, pid: Tid, ts: u64) {
        let Some(space) = self.spaces.get(space_id).and_then(|s| s.as_ref()) else {
            return;
        };
        let recs: Vec<Record> = space
            .modules
            .iter()
            .map(|m| module_record(ts, pid, m))
            .collect();
        recs.iter().for_each(|r| self.announce(r));
        self.events.buf().extend(recs);
    }

    /// Tells the module hook, if any, of the module load `rec`.
    fn announce(&self, rec: &Record) {
        if let (Some(hook), Record::ModuleLoad(m)) = (&self.cfg.on_module_load, rec) {
            (hook.0)(m);
        }
    }
}

fn module_record(ts: u64, pid: Tid, m: &KnownModule) -> Record {
    Record::ModuleLoad(Box::new(heaptape_format::ModuleLoad {
        ts,
        pid: pid as u32,
        path: m.path.clone(),
        build_id: m.elf.build_id().map(|b| b.to_vec()).unwrap_or_default(),
        base: m.bias,
        segments: m.elf.format_segments(m.bias),
    }))
}
