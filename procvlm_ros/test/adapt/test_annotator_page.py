"""The annotation page in a real headless browser (Debian's chromium driven by selenium)."""

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from procvlm_ros.adapt import annotation as ann
from procvlm_ros.adapt.frames import Demonstration
from procvlm_ros.adapt.server import AnnotationServer

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')
TASK = 'open the drawer'
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--window-size=1200,1000')


def demo(n=20):
    frames = []
    for i in range(n):
        img = np.full((60, 80, 3), 50 + 8 * i, np.uint8)
        img[20:40, 2 + 3 * i:12 + 3 * i] = (240, 40, 40)
        frames.append(img)
    return Demonstration(path=__import__('pathlib').Path('demo.mp4'), topic='', frames=frames,
                         times_s=[i / 4 for i in range(n)], fps=4.0)


@pytest.fixture
def server(tmp_path):
    with AnnotationServer(demo(), TASK, tmp_path / 'ann', source='demo.mp4') as s:
        yield s


def test_server_endpoints_and_validation(server):
    info = json.loads(urllib.request.urlopen(server.url + 'info', timeout=10).read())
    assert info['task'] == TASK and info['total_frames'] == 20
    jpeg = urllib.request.urlopen(server.url + 'frame/3', timeout=10).read()
    assert jpeg[:2] == b'\xff\xd8'
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + 'frame/20', timeout=10)
    assert err.value.code == 404

    def post(obj):
        req = urllib.request.Request(server.url + 'save', data=json.dumps(obj).encode(),
                                     headers={'Content-Type': 'application/json'})
        return urllib.request.urlopen(req, timeout=10)

    with pytest.raises(urllib.error.HTTPError) as err:
        post({'done': True, 'stages': [{'description': 'a', 'end_frame': 5},
                                       {'description': 'b', 'end_frame': 5}]})
    assert err.value.code == 400
    assert 'stages overlap' in json.loads(err.value.read())['error']
    assert not server.saved.is_set()


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip('chromium and chromedriver are not installed (apt-get install chromium '
                    'chromium-driver)')
    webdriver = pytest.importorskip('selenium.webdriver')
    import tempfile

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix='procvlm-chromium-')
    for flag in FLAGS + (f'--user-data-dir={profile}',):
        opts.add_argument(flag)
    service = webdriver.ChromeService(executable_path=DRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_mark_edit_delete_and_save_in_a_real_browser(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(server.url)
    wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == '1')
    assert browser.find_element(By.ID, 'task').text == TASK
    status = browser.find_element(By.ID, 'status')
    body = browser.find_element(By.TAG_NAME, 'body')

    def goto(frame):
        body.send_keys(Keys.HOME)
        for _ in range(frame // 10):
            body.send_keys(Keys.SHIFT, Keys.ARROW_RIGHT)
        for _ in range(frame % 10):
            browser.find_element(By.ID, 'next').click()
        wait.until(lambda d: status.text == f'Frame {frame} / 19')

    def mark(desc):
        box = browser.find_element(By.ID, 'desc')
        box.clear()
        box.send_keys(desc)
        browser.find_element(By.ID, 'mark').click()

    goto(5)
    mark('reach the knob')
    goto(12)
    mark('pull it open')
    goto(15)
    mark('a stage to delete')
    rows = browser.find_elements(By.CSS_SELECTOR, '#stages tr')
    assert len(rows) == 3
    rows[2].find_element(By.CLASS_NAME, 'stage-del').click()
    assert len(browser.find_elements(By.CSS_SELECTOR, '#stages tr')) == 2
    # Edit the second stage: new description and end frame 14.
    row = browser.find_elements(By.CSS_SELECTOR, '#stages tr')[1]
    desc = row.find_element(By.CLASS_NAME, 'stage-desc')
    desc.send_keys(Keys.CONTROL, 'a')  # select and overwrite: change fires on blur (TAB)
    desc.send_keys('pull the drawer open', Keys.TAB)
    end = browser.find_elements(By.CSS_SELECTOR, '#stages tr')[1].find_element(
        By.CLASS_NAME, 'stage-end')
    end.send_keys(Keys.CONTROL, 'a')
    end.send_keys('14', Keys.TAB)
    # A mark at frame 0 is refused on the page.
    goto(0)
    mark('too early')
    assert 'after frame 0' in browser.find_element(By.ID, 'message').text
    browser.find_element(By.ID, 'done-no').click()
    cutoff = browser.find_element(By.ID, 'cutoff')
    cutoff.clear()
    cutoff.send_keys('0.6')
    browser.find_element(By.ID, 'save').click()
    wait.until(lambda d: d.find_element(By.ID, 'message').text.startswith('Saved'))
    assert server.saved.is_set()

    saved = ann.load(server.out_path)
    assert saved.task == TASK and saved.done is False and saved.success_cutoff == 0.6
    assert [(s.description, s.end_frame) for s in saved.stages] == [
        ('reach the knob', 5), ('pull the drawer open', 14)]
    assert ann.resolve_sub_tasks(saved, [i / 4 for i in range(20)])[-1] == ['Not Done', 19]


def test_page_shows_the_server_error_for_overlapping_stages(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(server.url)
    wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == '1')
    for frame, desc in ((4, 'a'), (8, 'b')):
        browser.execute_script(f'show({frame});')
        box = browser.find_element(By.ID, 'desc')
        box.send_keys(desc)
        browser.find_element(By.ID, 'mark').click()
    end = browser.find_elements(By.CSS_SELECTOR, '#stages tr')[1].find_element(
        By.CLASS_NAME, 'stage-end')
    end.send_keys(Keys.CONTROL, 'a')
    end.send_keys('4', Keys.TAB)
    browser.find_element(By.ID, 'save').click()
    wait.until(lambda d: d.find_element(By.ID, 'message').text.startswith('Not saved'))
    assert 'stages overlap' in browser.find_element(By.ID, 'message').text
    assert not server.saved.is_set()
