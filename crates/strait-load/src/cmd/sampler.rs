//! Samples strait's and the harness's memory and CPU from `/proc` on a plain thread (so a busy
//! async runtime cannot delay it), keeping the peaks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use strait_load::procfs::{ProcSample, clock_ticks_per_second, sample};

#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    strait_rss_kb: u64,
    own_rss_kb: u64,
}

/// The sampling thread; stops when dropped.
pub struct Sampler {
    pid: Option<u32>,
    ticks: u64,
    peaks: Arc<Mutex<Peaks>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A reading of both processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// strait (when its pid is known).
    pub strait: Option<ProcSample>,
    /// This process.
    pub own: ProcSample,
    /// Busy ticks of the whole machine (other processes compete for the same CPUs).
    pub machine_ticks: u64,
}

impl Sampler {
    /// Samples `pid` (strait, if known) and this process every `every`.
    pub fn start(pid: Option<u32>, every: Duration) -> Self {
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peaks, stop) = (peaks.clone(), stop.clone());
            std::thread::Builder::new()
                .name("proc-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let s = pid.and_then(|p| sample(Some(p)).ok());
                        let own = sample(None).ok();
                        {
                            let mut p = peaks.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(s) = s {
                                p.strait_rss_kb = p.strait_rss_kb.max(s.rss_kb);
                            }
                            if let Some(o) = own {
                                p.own_rss_kb = p.own_rss_kb.max(o.rss_kb);
                            }
                        }
                        std::thread::sleep(every);
                    }
                })
                .ok()
        };
        Sampler {
            pid,
            ticks: clock_ticks_per_second(),
            peaks,
            stop,
            thread,
        }
    }

    /// Reads both processes now.
    pub fn now(&self) -> Reading {
        Reading {
            strait: self.pid.and_then(|p| sample(Some(p)).ok()),
            own: sample(None).unwrap_or_default(),
            machine_ticks: strait_load::procfs::machine_busy_ticks(),
        }
    }

    /// CPU seconds between two readings: (strait, own).
    pub fn cpu_between(&self, a: &Reading, b: &Reading) -> (Option<f64>, f64) {
        let secs = |x: u64, y: u64| y.saturating_sub(x) as f64 / self.ticks as f64;
        let strait = match (a.strait, b.strait) {
            (Some(x), Some(y)) => Some(secs(x.cpu_ticks, y.cpu_ticks)),
            _ => None,
        };
        (strait, secs(a.own.cpu_ticks, b.own.cpu_ticks))
    }

    /// CPU seconds used by other processes than strait and this one between two readings.
    pub fn others_between(&self, a: &Reading, b: &Reading) -> f64 {
        let (strait, own) = self.cpu_between(a, b);
        let machine = b.machine_ticks.saturating_sub(a.machine_ticks) as f64 / self.ticks as f64;
        (machine - strait.unwrap_or(0.0) - own).max(0.0)
    }

    /// Largest RSS sampled so far, KiB: (strait, own).
    pub fn peaks_kb(&self) -> (Option<u64>, u64) {
        let p = *self.peaks.lock().unwrap_or_else(PoisonError::into_inner);
        (self.pid.map(|_| p.strait_rss_kb), p.own_rss_kb)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
