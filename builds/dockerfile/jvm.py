"""Java with Maven or Gradle (Spring Boot, Quarkus, Micronaut, plain executable jars): build
with the JDK image and the repository cache mounted, run the jar on a JRE image."""

import re

from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, Detection, Recipe
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 8080
_JAR_PICK = (  # the runnable jar among a build's outputs, or a clear failure
    "set -e; jar=$(ls {dir}/*.jar 2>/dev/null | grep -v -e '-sources\\.jar$' -e '-javadoc\\.jar$' -e '-plain\\.jar$' "
    "-e '/original-' | head -n 1); test -n \"$jar\" || {{ echo 'no jar in {dir}/ after the build' >&2; exit 1; }}; "
    "mkdir -p /out && cp \"$jar\" /out/app.jar"
)


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    gradle = files.any_file("build.gradle.kts", "build.gradle")
    maven = files.is_file("pom.xml")
    if not (gradle or maven):
        return None
    text = files.read_text(gradle) if gradle else files.read_text("pom.xml")
    text = text or ""
    det = Detection("java", ENTRY_POINT, port=DEFAULT_PORT)
    if "quarkus" in text:
        det.framework = "quarkus"
    elif "spring-boot" in text or "org.springframework.boot" in text:
        det.framework = "spring-boot"
    elif "micronaut" in text:
        det.framework = "micronaut"
    det.version_request, det.version_source = _java_version(files, text, gradle or "pom.xml")
    if gradle:
        wrapper = files.is_file("gradlew")
        det.package_manager = "gradle"
        det.build = "./gradlew build -x test" if wrapper else "gradle build -x test"
        det.hints["wrapper"] = wrapper
        det.hints["output_dir"] = "build/quarkus-app" if det.framework == "quarkus" else "build/libs"
    else:
        det.package_manager = "maven"
        det.build = "mvn -B -DskipTests package"
        det.hints["output_dir"] = "target/quarkus-app" if det.framework == "quarkus" else "target"
    det.run = "java -jar quarkus-app/quarkus-run.jar" if det.framework == "quarkus" else "java -jar app.jar"
    return det


def _java_version(files: RepoFiles, text: str, source: str) -> tuple[str | None, str | None]:
    for name in (".java-version", ".sdkmanrc", ".tool-versions", "system.properties"):
        content = files.read_text(name) or ""
        match = re.search(r"(?:^|java[=\s]+(?:[a-z]+-)?|java\.runtime\.version=)(\d+)", content, re.M)
        if content and match:
            return match.group(1), name
    toolchain = re.search(r"JavaLanguageVersion\.of\(\s*(\d+)\s*\)", text)
    if toolchain:  # Gradle toolchains want exactly this JDK
        return toolchain.group(1), source
    for pattern in (r"<maven\.compiler\.release>(\d+)<", r"<java\.version>(?:1\.)?(\d+)<", r"<release>(\d+)<",
                    r"<maven\.compiler\.source>(?:1\.)?(\d+)<", r"JavaVersion\.VERSION_(?:1_)?(\d+)",
                    r"sourceCompatibility\s*=\s*['\"]?(?:1\.)?(\d+)"):
        match = re.search(pattern, text)
        if match:  # a language level: any newer JDK builds it
            return f">={match.group(1)}", source
    return None, None


def render(recipe: Recipe, files: RepoFiles) -> str:
    gradle = recipe.package_manager == "gradle"
    hints = recipe.hints
    output_dir = hints.get("output_dir", "build/libs" if gradle else "target")
    df = Dockerfile().stage(recipe.images["gradle" if gradle else "maven"], "build")
    if gradle:
        df.env(GRADLE_OPTS="-Dorg.gradle.daemon=false")
    df.workdir("/app")
    df.copy_source()
    if hints.get("wrapper"):
        df.run("chmod +x gradlew")
    caches = (Cache("gradle", "/root/.gradle"),) if gradle else (Cache("maven", "/root/.m2"),)
    if recipe.install:
        df.run(recipe.install, caches)
    if recipe.build:
        df.run(recipe.build, caches)
    if recipe.framework == "quarkus":
        df.run(f"mkdir -p /out && cp -r {output_dir} /out/quarkus-app")
    else:
        df.run(_JAR_PICK.format(dir=output_dir))

    df.stage(recipe.images["run"])
    df.create_user()
    df.copy("/out/", "/app/", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    df.env(PORT=recipe.port, SERVER_PORT=recipe.port, JAVA_TOOL_OPTIONS="-XX:MaxRAMPercentage=75.0")
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
