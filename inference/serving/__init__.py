"""The Ray Serve application: stage deployments, a job store, and the HTTP API."""
