"""Servers that expose micro-databases to clients: the PostgreSQL wire protocol (``pgwire``)."""
