"""The shared library: bus connection, API client, informers, controllers, leader election, registration."""
