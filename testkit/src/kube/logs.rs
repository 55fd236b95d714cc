//! Container logs: growing buffers the kubelet (or a test) writes and `pods/{name}/log`
//! reads, following them while the container runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// One container's log: its bytes so far and whether the container has finished writing.
#[derive(Debug)]
pub struct LogBuffer {
    data: Mutex<Vec<u8>>,
    /// Bumped on every append and on close, so followers wake.
    changed: watch::Sender<(usize, bool)>,
}

impl LogBuffer {
    fn new() -> Self {
        let (changed, _) = watch::channel((0, false));
        Self {
            data: Mutex::new(Vec::new()),
            changed,
        }
    }

    /// Appends output.
    pub fn append(&self, bytes: &[u8]) {
        let len = {
            let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
            data.extend_from_slice(bytes);
            data.len()
        };
        self.changed.send_modify(|s| s.0 = len);
    }

    /// Marks the log finished: followers end after reading the rest.
    pub fn close(&self) {
        self.changed.send_modify(|s| s.1 = true);
    }

    /// A copy of everything written so far.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bytes from `offset` on.
    pub fn read_from(&self, offset: usize) -> Vec<u8> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        data.get(offset..).map(<[u8]>::to_vec).unwrap_or_default()
    }

    /// A receiver that changes when the log grows or closes.
    pub fn subscribe(&self) -> watch::Receiver<(usize, bool)> {
        self.changed.subscribe()
    }

    /// Whether the writer has finished.
    pub fn closed(&self) -> bool {
        self.changed.borrow().1
    }
}

/// Logs by (namespace, pod, container).
#[derive(Debug, Default)]
pub struct Logs {
    buffers: Mutex<HashMap<(String, String, String), Arc<LogBuffer>>>,
}

impl Logs {
    /// The buffer for a container, created empty on first use.
    pub fn buffer(&self, namespace: &str, pod: &str, container: &str) -> Arc<LogBuffer> {
        let mut map = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        ))
        .or_insert_with(|| Arc::new(LogBuffer::new()))
        .clone()
    }

    /// The buffer for a container if anything was ever written.
    pub fn existing(&self, namespace: &str, pod: &str, container: &str) -> Option<Arc<LogBuffer>> {
        let map = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        ))
        .cloned()
    }

    /// Forgets a pod's logs (the pod object is gone, so are its logs).
    pub fn forget_pod(&self, namespace: &str, pod: &str) {
        let mut map = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(ns, p, _), _| !(ns == namespace && p == pod));
    }
}

/// The last `lines` lines of `data` (a trailing newline does not start a new line).
pub fn tail_lines(data: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return &data[data.len()..];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return &data[i + 1..];
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\n", 0), b"");
    }

    #[test]
    fn a_buffer_grows_and_wakes_followers() {
        let logs = Logs::default();
        let buf = logs.buffer("ns", "p", "main");
        let mut rx = buf.subscribe();
        buf.append(b"hi\n");
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        buf.close();
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            logs.existing("ns", "p", "main").unwrap().snapshot(),
            b"hi\n"
        );
        logs.forget_pod("ns", "p");
        assert!(logs.existing("ns", "p", "main").is_none());
    }
}
