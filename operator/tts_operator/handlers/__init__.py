"""Reconcile logic behind the Kopf handlers."""
