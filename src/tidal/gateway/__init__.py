"""The gateway: one asyncio process serving invocations (/fn/...) and the admin API (/v1/...)."""
