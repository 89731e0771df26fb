"""This project's own models. Deliberately named ``models``: squeezebench's registry is
``squeezebench.models`` and leaves this name to the user."""
