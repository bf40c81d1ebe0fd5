"""Events to Ropo One: the HTTP client (`ropo`) and the scheduler that paces, retries and breaks (`scheduler`)."""
