LOGGING = {
    'version': 1,
    'disable_existing_loggers': True
}

DEFAULT_PERMISSIONS = {}
LOGIN_REQUIRED = False
