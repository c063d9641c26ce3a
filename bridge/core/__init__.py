"""The pure core: message types, validation, settings rules, states, topics, errors. Imports no other layer."""
