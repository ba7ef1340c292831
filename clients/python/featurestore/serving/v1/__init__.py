"""Generated from protos/ by tools/protogen.py. Do not edit."""
