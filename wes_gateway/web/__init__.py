"""The HTTP surface: the Connexion app (app), one route map from openapi/wes.yaml (routes),
authentication and identity, the access log, the WES handlers, the run browser (ui), events,
downloads, service-info, the RO-Crate and /metrics. The top layer: nothing imports it."""
