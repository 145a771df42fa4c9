//! Errors collected across a macro's input, so that the user sees every
//! mistake at once instead of one per build.

/// Collects every error instead of stopping at the first.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// All the errors pushed, then `last`.
    pub fn and(mut self, last: syn::Error) -> syn::Error {
        self.push(last);
        match self.0 {
            Some(all) => all,
            None => unreachable!("an error was just pushed"),
        }
    }

    /// `Err` with all the errors pushed, in the order pushed, if any.
    pub fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
