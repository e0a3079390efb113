"""The endpoints controller: Endpoints for every Service with a selector."""
