//! The one body type the router sends both ways, so that neither direction boxes a body per
//! request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::balance::BackendState;
use crate::metrics::AppMetrics;
use crate::pool::Checkin;

/// A request or response body as the router forwards it.
#[derive(Debug, Default)]
pub(crate) enum Body {
    /// No bytes at all.
    #[default]
    Empty,
    /// Bytes the router holds whole: its own error pages.
    Full(Option<Bytes>),
    /// A body streamed from the other side.
    Stream(Stream),
}

/// A streamed body, with what must happen when it is done: a response's connection goes back
/// to its pool if the body was read to the end, and the request stops counting as in flight,
/// so that streaming responses count as outstanding until their last byte.
#[derive(Debug)]
pub(crate) struct Stream {
    body: Incoming,
    ended: bool,
    checkin: Option<Checkin>,
    _flight: Option<InFlight>,
}

impl Stream {
    pub fn new(body: Incoming, checkin: Option<Checkin>, flight: Option<InFlight>) -> Stream {
        Stream { body, ended: false, checkin, _flight: flight }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A body dropped before its end leaves unread bytes on the connection: it cannot carry
        // another request, and dropping it closes it.
        if (self.ended || hyper::body::Body::is_end_stream(&self.body))
            && let Some(checkin) = self.checkin.take()
        {
            checkin.put();
        }
    }
}

impl Body {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => {
                let frame = Pin::new(&mut s.body).poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    s.ended = true;
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty | Body::Full(None) => true,
            Body::Full(Some(_)) => false,
            Body::Stream(s) => s.ended || s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty | Body::Full(None) => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Stream(s) => s.body.size_hint(),
        }
    }
}

/// One request of an app, and one attempt on a backend, in flight; both counts go down when it
/// is dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    app: Arc<AppMetrics>,
    backend: Option<Arc<BackendState>>,
}

impl InFlight {
    pub(crate) fn begin(app: Arc<AppMetrics>) -> InFlight {
        app.begin();
        InFlight { app, backend: None }
    }

    /// Counts an attempt on `backend`, ending the previous attempt's count if there was one.
    pub(crate) fn attempt(&mut self, backend: &Arc<BackendState>) {
        backend.begin();
        if let Some(previous) = self.backend.replace(backend.clone()) {
            previous.end();
        }
    }

    pub(crate) fn app(&self) -> &Arc<AppMetrics> {
        &self.app
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.app.end();
        if let Some(backend) = &self.backend {
            backend.end();
        }
    }
}
