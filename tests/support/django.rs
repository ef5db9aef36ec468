//! A Django project for the template tests, written by hand.

use std::path::Path;

/// Writes into `project` a Django project as `django-admin startproject mysite` makes it
/// (the host has no Django: the VM's package layer has).
pub fn write_project(project: &Path) {
    std::fs::create_dir_all(project.join("mysite")).unwrap();
    std::fs::write(
        project.join("manage.py"),
        "import os, sys\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n\
         from django.core.management import execute_from_command_line\nexecute_from_command_line(sys.argv)\n",
    )
    .unwrap();
    std::fs::write(project.join("mysite/__init__.py"), "").unwrap();
    std::fs::write(
        project.join("mysite/urls.py"),
        "from django.contrib import admin\nfrom django.urls import path\n\
         urlpatterns = [path('admin/', admin.site.urls)]\n",
    )
    .unwrap();
    std::fs::write(project.join("mysite/settings.py"), DJANGO_SETTINGS).unwrap();
}

/// Points `project`'s settings at the PostgreSQL its VM's `PG*` variables name (the
/// django-postgres template's).
pub fn use_postgres(project: &Path) {
    let settings = project.join("mysite/settings.py");
    let mut text = std::fs::read_to_string(&settings).unwrap();
    text.push_str(
        "\nimport os\nDATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', \
         'HOST': os.environ['PGHOST'], 'NAME': os.environ['PGDATABASE'], \
         'USER': os.environ['PGUSER'], 'PASSWORD': os.environ['PGPASSWORD']}}\n",
    );
    std::fs::write(&settings, text).unwrap();
}

const DJANGO_SETTINGS: &str = r#"from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = 'mvm-test-only'
DEBUG = True
ALLOWED_HOSTS = ['*']
INSTALLED_APPS = ['django.contrib.admin', 'django.contrib.auth', 'django.contrib.contenttypes',
                  'django.contrib.sessions', 'django.contrib.messages', 'django.contrib.staticfiles']
MIDDLEWARE = ['django.contrib.sessions.middleware.SessionMiddleware',
              'django.middleware.common.CommonMiddleware',
              'django.middleware.csrf.CsrfViewMiddleware',
              'django.contrib.auth.middleware.AuthenticationMiddleware',
              'django.contrib.messages.middleware.MessageMiddleware']
ROOT_URLCONF = 'mysite.urls'
TEMPLATES = [{'BACKEND': 'django.template.backends.django.DjangoTemplates', 'APP_DIRS': True,
              'OPTIONS': {'context_processors': ['django.template.context_processors.request',
                                                 'django.contrib.auth.context_processors.auth',
                                                 'django.contrib.messages.context_processors.messages']}}]
DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': BASE_DIR / 'db.sqlite3'}}
STATIC_URL = 'static/'
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
"#;
