//! A router that remembers its routes.
//!
//! axum cannot list the routes of a [`Router`], yet the OpenAPI document
//! (`docs/openapi.yaml`) must name exactly the routes the servers answer.
//! So every server builds its routes through [`ListedRouter`]: each
//! `.get(path, handler)` adds the route to the router *and* to a list, and a
//! test compares that list with the document. A route added without an
//! entry, or an entry whose route was removed, fails that test; nothing has
//! to be remembered by hand.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{self, MethodRouter};
use axum::Router;

/// One route: a method and an axum path (`/tickets/{ticket_id}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// The HTTP method, upper case.
    pub method: String,
    /// The path, with `{name}` parameters as axum and OpenAPI write them.
    pub path: &'static str,
}

/// A [`Router`] and the list of the routes added to it.
#[derive(Debug)]
pub struct ListedRouter<S = ()> {
    router: Router<S>,
    routes: Vec<Route>,
}

impl<S: Clone + Send + Sync + 'static> Default for ListedRouter<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> ListedRouter<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// `GET path`.
    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::GET, path, routing::get(handler))
    }

    /// `POST path`.
    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::POST, path, routing::post(handler))
    }

    /// `PATCH path`.
    pub fn patch<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::PATCH, path, routing::patch(handler))
    }

    /// `DELETE path`.
    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::DELETE, path, routing::delete(handler))
    }

    fn add(mut self, method: Method, path: &'static str, handler: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, handler);
        self.routes.push(Route {
            method: method.as_str().to_owned(),
            path,
        });
        self
    }

    /// Adds another listed router's routes (none may clash, as with
    /// [`Router::merge`]).
    pub fn merge(mut self, other: ListedRouter<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.routes.extend(other.routes);
        self
    }

    /// The routes added so far, in the order they were added.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The router, to finish (fallbacks, layers, state) and serve.
    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_added_is_listed_with_its_method() {
        let listed = ListedRouter::<()>::new()
            .get("/a", || async { "a" })
            .merge(ListedRouter::new().delete("/b/{id}", || async { "b" }));
        let routes: Vec<(&str, &str)> = listed
            .routes()
            .iter()
            .map(|r| (r.method.as_str(), r.path))
            .collect();
        assert_eq!(routes, [("GET", "/a"), ("DELETE", "/b/{id}")]);
    }
}
