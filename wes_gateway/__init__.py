"""wes-gateway: a GA4GH WES 1.1 service that runs CWL and WDL workflows on Toil."""

__version__ = "0.1.0"
