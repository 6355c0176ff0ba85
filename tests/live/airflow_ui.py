"""Drives the Airflow 3 UI in headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

Logs in through the SimpleAuthManager's form as a user would, opens a DAG run (its grid and task
instance table), reads the states the page shows, and saves screenshots. Selenium is pointed at
the system's chromedriver, so it never downloads a browser or a driver.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait


def chromium_paths() -> tuple[str, str]:
    """The Chromium binary and its driver, or an error saying how to install them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError(
            "the live UI test needs Debian's chromium and chromium-driver "
            f"(found chromium={browser}, chromedriver={driver}); "
            "scripts/install-system.sh (make setup) installs them"
        )
    return browser, driver


class AirflowUI:
    """One headless browser session on the Airflow UI at ``base_url``."""

    def __init__(self, base_url: str, timeout: float = 60.0, size: tuple[int, int] = (1600, 900)):
        browser, driver = chromium_paths()
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={size[0]},{size[1]}",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(arg)
        self.base_url = base_url.rstrip("/")
        self.driver = webdriver.Chrome(service=Service(driver), options=options)
        self.wait = WebDriverWait(self.driver, timeout)

    def close(self) -> None:
        self.driver.quit()

    def login(self, username: str, password: str) -> None:
        """Sign in through the login form; returns once the UI has left the login page."""
        self.driver.get(f"{self.base_url}/auth/login")
        self.wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(username)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.wait.until(lambda d: "/auth/login" not in d.current_url)

    def open_run(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """The run's page: the grid (one cell per task) beside its task instance table."""
        self.driver.get(f"{self.base_url}/dags/{dag_id}/runs/{run_id}")
        for task_id in task_ids:
            self.wait.until(
                ec.presence_of_element_located(
                    (By.CSS_SELECTOR, f'[data-testid="grid-{run_id}-{task_id}"]')
                )
            )
        self.wait.until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, '[data-testid="table-cell-state"]'))
                >= len(task_ids)
            )
        )

    def open_dags(self, dag_ids: list[str]) -> None:
        """The DAG list, once every one of ``dag_ids`` is shown."""
        self.driver.get(f"{self.base_url}/dags")
        for dag_id in dag_ids:
            self.wait.until(
                ec.presence_of_element_located((By.CSS_SELECTOR, f'a[href="/dags/{dag_id}"]'))
            )

    def task_url(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        """The UI address of a task instance (of one mapped instance when ``map_index`` >= 0)."""
        url = f"{self.base_url}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}"
        return f"{url}/mapped/{map_index}" if map_index >= 0 else url

    def extra_links(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, str]:
        """Link name -> URL of the extra links a task instance's *Details* tab shows (Airflow 3
        renders each as an ``<a rel="noopener noreferrer">`` under "Extra Links"); waits for
        at least one."""
        self.driver.get(self.task_url(dag_id, run_id, task_id, map_index) + "/details")
        selector = 'a[rel="noopener noreferrer"]'
        self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))
        anchors = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return {a.text.strip(): a.get_attribute("href") for a in anchors if a.text.strip()}

    def page_text(self, url: str) -> str:
        """Open ``url`` in this (signed-in) browser and return the page's visible text."""
        self.driver.get(url)
        body = self.wait.until(ec.presence_of_element_located((By.TAG_NAME, "body")))
        return body.text

    def run_state(self) -> str:
        """The state badge in the run's header card, as shown (e.g. ``Success``)."""
        header = self.driver.find_element(By.CSS_SELECTOR, '[data-testid="header-card"]')
        return header.find_element(By.CSS_SELECTOR, '[data-testid="state-badge"]').text.strip()

    def task_states(self) -> dict[str, str]:
        """Task id -> state, as the run's task instance table shows them."""
        names = self.driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="table-cell-task_display_name"]'
        )
        states = self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="table-cell-state"]')
        return {n.text.strip(): s.text.strip() for n, s in zip(names, states, strict=True)}

    def grid_cells(self, run_id: str) -> list[str]:
        """Task ids that have a cell in the grid column of ``run_id``."""
        prefix = f"grid-{run_id}-"
        cells = self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid^="{prefix}"]')
        return [c.get_attribute("data-testid").removeprefix(prefix) for c in cells]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"screenshot not written: {path}")
        return path
