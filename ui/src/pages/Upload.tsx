// Upload an image (kernel + ext4 rootfs [+ initrd]) as multipart/form-data with a progress bar
// (POST /v1/images/upload; XMLHttpRequest, since fetch reports no upload progress).
import { Button, FileInput, Modal, Progress, Stack, Text, TextInput } from "@mantine/core";
import { useState } from "react";
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

export function UploadImageButton({ onDone }: { onDone: () => void }) {
  const auth = useAuth();
  const [open, setOpen] = useState(false);
  const [name, setName] = useState("");
  const [kernel, setKernel] = useState<File | null>(null);
  const [rootfs, setRootfs] = useState<File | null>(null);
  const [initrd, setInitrd] = useState<File | null>(null);
  const [pct, setPct] = useState<number | null>(null);
  const submit = async () => {
    if (!name || !kernel || !rootfs) return;
    const form = new FormData();
    form.append("name", name);
    form.append("kernel", kernel);
    form.append("rootfs", rootfs);
    if (initrd) form.append("initrd", initrd);
    setPct(0);
    try {
      await refresh(); // a fresh access token for a long upload
      await send("/v1/images/upload", form, setPct);
      toastOk(`image ${name} uploaded`);
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
        Upload image
      </GuardedButton>
      <Modal opened={open} onClose={() => setOpen(false)} title="Upload an image" size="lg">
        <Stack>
          <Text size="sm" c="dimmed">
            A kernel (bzImage/ELF), a raw ext4 root filesystem and optionally an initrd. The image is private to you.
          </Text>
          <TextInput label="Name" required value={name} onChange={(e) => setName(e.currentTarget.value)} />
          <FileInput label="Kernel" required value={kernel} onChange={setKernel} />
          <FileInput label="Root filesystem (ext4)" required value={rootfs} onChange={setRootfs} />
          <FileInput label="Initrd" clearable value={initrd} onChange={setInitrd} />
          {pct !== null && <Progress value={pct} animated aria-label="upload progress" />}
          <Button onClick={() => void submit()} disabled={!name || !kernel || !rootfs} loading={pct !== null}>
            Upload
          </Button>
        </Stack>
      </Modal>
    </>
  );
}

/** Import a container image from an OCI layout or docker archive tar (POST
 * /v1/container-images/import?name=, the raw tar as the body), with a progress bar. */
export function ImportContainerImageButton({ onDone }: { onDone: () => void }) {
  const auth = useAuth();
  const [open, setOpen] = useState(false);
  const [name, setName] = useState("");
  const [file, setFile] = useState<File | null>(null);
  const [pct, setPct] = useState<number | null>(null);
  const submit = async () => {
    if (!name || !file) return;
    setPct(0);
    try {
      await refresh();
      await send(`/v1/container-images/import?name=${encodeURIComponent(name)}`, file, setPct);
      toastOk(`container image ${name} imported`);
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
        Import archive
      </GuardedButton>
      <Modal opened={open} onClose={() => setOpen(false)} title="Import a container image" size="lg">
        <Stack>
          <Text size="sm" c="dimmed">
            An OCI image layout tar (skopeo copy ... oci-archive:) or a docker archive (docker save).
          </Text>
          <TextInput label="Name" required value={name} onChange={(e) => setName(e.currentTarget.value)} />
          <FileInput label="Archive (.tar)" required value={file} onChange={setFile} />
          {pct !== null && <Progress value={pct} animated aria-label="upload progress" />}
          <Button onClick={() => void submit()} disabled={!name || !file} loading={pct !== null}>
            Import
          </Button>
        </Stack>
      </Modal>
    </>
  );
}
