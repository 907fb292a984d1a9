# The tenant-migrator image: one static (musl) binary on an empty base, run as non-root.
# Nothing is downloaded outside the package registries: crates come from crates.io.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev ca-certificates
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tenant-migrator \
 && strip target/release/tenant-migrator

FROM scratch
COPY --from=build /src/target/release/tenant-migrator /tenant-migrator
# The CA bundle that rediss:// and https:// Qdrant verify servers against (a private CA:
# mount its bundle and point SSL_CERT_FILE at it).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# No shell, no package manager, nothing writable needed: readOnlyRootFilesystem works.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tenant-migrator"]
CMD ["controller"]
