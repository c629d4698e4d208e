//! The one body type the router sends both ways, so that neither direction boxes a body per
//! request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::balance::BackendState;
use crate::metrics::AppMetrics;

/// A request or response body as the router forwards it.
#[derive(Debug, Default)]
pub(crate) enum Body {
    /// No bytes at all.
    #[default]
    Empty,
    /// Bytes the router holds whole: an error page, or a request body buffered for retries.
    Full(Option<Bytes>),
    /// A body streamed from the other side. Its guard, if any, ends the request's in-flight
    /// accounting when the body is dropped, so streaming responses count as outstanding.
    Stream { body: Incoming, _flight: Option<InFlight> },
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
            Body::Stream { body, .. } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty | Body::Full(None) => true,
            Body::Full(Some(_)) => false,
            Body::Stream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty | Body::Full(None) => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Stream { body, .. } => body.size_hint(),
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
