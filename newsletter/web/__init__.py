"""The web side: public pages, the JSON API, the development mailbox, error pages."""
