//! Values addressed by a `u32`, allocated in fixed chunks, the slots of
//! removed ones reused: the graph's vertices and edges, the recency list's
//! entries. A `u32` index is half a pointer, and an index survives the
//! storage growing.

/// Slots allocated this many at a time: a `Vec` of all of them would keep
/// up to twice the room they need after it grows.
const CHUNK: usize = 1024;

/// Values addressed by a `u32`, with the slots of removed ones reused.
pub struct Slab<T> {
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<u32>,
    /// Slots ever used, and slots holding a value.
    pub slots: usize,
    pub live: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            slots: 0,
            live: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> u32 {
        self.live += 1;
        if let Some(i) = self.free.pop() {
            self.chunks[i as usize / CHUNK][i as usize % CHUNK] = Some(value);
            return i;
        }
        if self.slots.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk").push(Some(value));
        self.slots += 1;
        (self.slots - 1) as u32
    }

    pub fn get(&self, i: u32) -> Option<&T> {
        self.chunks
            .get(i as usize / CHUNK)?
            .get(i as usize % CHUNK)?
            .as_ref()
    }

    pub fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.chunks
            .get_mut(i as usize / CHUNK)?
            .get_mut(i as usize % CHUNK)?
            .as_mut()
    }

    pub fn take(&mut self, i: u32) -> Option<T> {
        let value = self
            .chunks
            .get_mut(i as usize / CHUNK)?
            .get_mut(i as usize % CHUNK)?
            .take()?;
        self.live -= 1;
        self.free.push(i);
        Some(value)
    }
}
