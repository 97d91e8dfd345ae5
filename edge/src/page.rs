//! One page of a list, as every list route answers it: `{object: "list", data, has_more,
//! next_cursor}`; `next_cursor` is what `after` takes for the next page.

use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    pub fn new(data: Vec<T>, has_more: bool, next_cursor: Option<String>) -> Self {
        Self {
            object: "list",
            data,
            has_more,
            next_cursor,
        }
    }

    /// The same page with each item turned into `U`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page::new(
            self.data.into_iter().map(f).collect(),
            self.has_more,
            self.next_cursor,
        )
    }
}
