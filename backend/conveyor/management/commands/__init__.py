"""`manage.py conveyor`: operate tasks, queues and workers."""
