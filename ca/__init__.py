"""The CA: agent trust and lifecycle service (docs/design.md §3.1, §3.2 and §3.4).

What it does: the PTA certificate authority signs agents' CSRs at registration (bearer
token of a tenant's ``hybrid_identity_admin``); over mutual TLS with that certificate an
agent bootstraps (gets a broker user that reaches only its tenant's vhost and queue), sends
heartbeats and reads its own state; admins list and delete their tenant's agents
(deletion revokes the certificate and the broker user); CRLs of the PTA CA and the service
TLS CA are served over plain HTTP. The HTTP contract is docs/architecture.md.

Run: ``pta-ca`` (``ca.main:main``), configured by ``PTA_CA_*`` environment variables
(``ca.settings.Settings``): listeners (``HOST``, ``PORT``, ``CRL_PORT``), the HTTPS
certificate, both CAs' certificate and key files, ``POSTGRES_DSN``, ``STS_URL`` and
``STS_CA_BUNDLE`` (admin token keys), the RabbitMQ management URL and admin credentials,
``AGENT_AMQP_URL``, ``STS_BROKER_USER`` (granted its permissions in each tenant vhost,
and named to agents as the only publisher of requests), lifetimes and intervals.

Modules: ``app`` (aiohttp applications, error middleware), ``main`` (the process),
``settings``, ``errors``, ``bodies`` (request and answer bodies), ``admin_tokens``
(bearer checks, JWKS), ``mtls`` (agent identity from the client certificate),
``authority`` (the CA keys, signing), ``registration``, ``bootstrap`` (bootstrap,
heartbeat, agent views), ``revocation`` (delete, CRLs), ``broker_admin`` (RabbitMQ
management API), ``queries`` (all SQL), ``resources`` (typed app keys).
"""
