// Upload an image (kernel + ext4 rootfs [+ initrd]) as multipart/form-data with a progress bar
// (POST /v1/images/upload; XMLHttpRequest, since fetch reports no upload progress).
import { Button, FileInput, Modal, Progress, Stack, Text, TextInput } from "@mantine/core";
import { useState, type ReactNode } from "react";
import { problemToError } from "../api/errors";
import { accessToken, refresh } from "../api/session";
import { useAuth } from "../auth";
import { GuardedButton } from "../components/Guarded";
import { toastError, toastOk } from "../notify";

function send(url: string, form: FormData | File, onProgress: (pct: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    if (form instanceof File) xhr.setRequestHeader("Content-Type", "application/x-tar");
    const token = accessToken();
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress((e.loaded / e.total) * 100);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve();
      let body: unknown = xhr.responseText;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* text */
      }
      reject(problemToError(xhr.status, body, { get: (h) => xhr.getResponseHeader(h) }));
    };
    xhr.onerror = () => reject(new Error("the upload was interrupted"));
    xhr.send(form);
  });
}

/** A button opening a dialog that uploads files with a progress bar: a name, the page's file
 * inputs (`children`), then `request(name)` sent with a fresh access token (a long upload). */
function UploadDialog({
  button,
  title,
  hint,
  submitLabel,
  ready,
  request,
  done,
  onDone,
  children,
}: {
  button: string;
  title: string;
  hint: string;
  submitLabel: string;
  ready: boolean;
  request: (name: string) => { url: string; body: FormData | File };
  done: (name: string) => string;
  onDone: () => void;
  children: ReactNode;
}) {
  const auth = useAuth();
  const [open, setOpen] = useState(false);
  const [name, setName] = useState("");
  const [pct, setPct] = useState<number | null>(null);
  const submit = async () => {
    if (!name || !ready) return;
    const { url, body } = request(name);
    setPct(0);
    try {
      await refresh();
      await send(url, body, setPct);
      toastOk(done(name));
      setOpen(false);
      onDone();
    } catch (e) {
      toastError(e);
    } finally {
      setPct(null);
    }
  };
  return (
    <>
      <GuardedButton variant="outline" verdict={auth.can("create")} onClick={() => setOpen(true)}>
        {button}
      </GuardedButton>
      <Modal opened={open} onClose={() => setOpen(false)} title={title} size="lg">
        <Stack>
          <Text size="sm" c="dimmed">
            {hint}
          </Text>
          <TextInput label="Name" required value={name} onChange={(e) => setName(e.currentTarget.value)} />
          {children}
          {pct !== null && <Progress value={pct} animated aria-label="upload progress" />}
          <Button onClick={() => void submit()} disabled={!name || !ready} loading={pct !== null}>
            {submitLabel}
          </Button>
        </Stack>
      </Modal>
    </>
  );
}

export function UploadImageButton({ onDone }: { onDone: () => void }) {
  const [kernel, setKernel] = useState<File | null>(null);
  const [rootfs, setRootfs] = useState<File | null>(null);
  const [initrd, setInitrd] = useState<File | null>(null);
  const request = (name: string) => {
    const form = new FormData();
    form.append("name", name);
    if (kernel) form.append("kernel", kernel);
    if (rootfs) form.append("rootfs", rootfs);
    if (initrd) form.append("initrd", initrd);
    return { url: "/v1/images/upload", body: form };
  };
  return (
    <UploadDialog
      button="Upload image"
      title="Upload an image"
      hint="A kernel (bzImage/ELF), a raw ext4 root filesystem and optionally an initrd. The image is private to you."
      submitLabel="Upload"
      ready={kernel !== null && rootfs !== null}
      request={request}
      done={(name) => `image ${name} uploaded`}
      onDone={onDone}
    >
      <FileInput label="Kernel" required value={kernel} onChange={setKernel} />
      <FileInput label="Root filesystem (ext4)" required value={rootfs} onChange={setRootfs} />
      <FileInput label="Initrd" clearable value={initrd} onChange={setInitrd} />
    </UploadDialog>
  );
}

/** Import a container image from an OCI layout or docker archive tar (POST
 * /v1/container-images/import?name=, the raw tar as the body), with a progress bar. */
export function ImportContainerImageButton({ onDone }: { onDone: () => void }) {
  const [file, setFile] = useState<File | null>(null);
  return (
    <UploadDialog
      button="Import archive"
      title="Import a container image"
      hint="An OCI image layout tar (skopeo copy ... oci-archive:) or a docker archive (docker save)."
      submitLabel="Import"
      ready={file !== null}
      request={(name) => ({ url: `/v1/container-images/import?name=${encodeURIComponent(name)}`, body: file as File })}
      done={(name) => `container image ${name} imported`}
      onDone={onDone}
    >
      <FileInput label="Archive (.tar)" required value={file} onChange={setFile} />
    </UploadDialog>
  );
}
