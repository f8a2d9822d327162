"""Alembic environment and versions of the registry schema, shipped inside the wheel.

Run them with ``eptctl db upgrade`` or ``registry.upgrade(url)``; ``registry.migrate.alembic_config()`` points
Alembic's programmatic Config here, so no alembic.ini is needed.
"""
